"""The fast patch path equals the naive reference (a full forward with a hook) on every KL and CE.

Fixtures: tiny Gemma-3 (sliding window 24 < document length, 2 sliding : 1 global, soft-cap 30
with the final norm raised so the cap is active), the multimodal Gemma-3 wrapper, Llama.
"""
import contextlib

import numpy as np
import pytest
import torch

import fixtures
from causal_kl.errors import CausalKLError
from causal_kl.models import load_model
from causal_kl.patching import (ABLATIONS, SiteVariants, clean_pass, fast_sites, naive_site, patch_document,
                                readout, results_table)

LAYER = 2


@contextlib.contextmanager
def gemma_norm_in_input_dtype():
    """transformers' Gemma3RMSNorm computes in float32 even for a float64 model; for the float64
    exactness check both paths get a norm in the input's dtype (the method, not the model, is tested)."""
    from transformers.models.gemma3 import modeling_gemma3 as g

    orig = g.Gemma3RMSNorm.forward

    def fwd(self, x):
        return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)) * (1.0 + self.weight.to(x.dtype))

    g.Gemma3RMSNorm.forward = fwd
    try:
        yield
    finally:
        g.Gemma3RMSNorm.forward = orig


def doc_and_sites(m, seed=0, n_var=8):
    ids = m.tokenizer(fixtures.make_texts(1, (160, 200), seed=seed)[0]).input_ids[:260]
    T = len(ids)
    st = clean_pass(m, ids, LAYER)
    g = torch.Generator().manual_seed(seed)
    positions = [3, 10, 20, 23, 24, 25, 47, 120, T - 33, T - 20, T - 1]  # before/after/straddling W=24, past the end
    sites = []
    for k, p in enumerate(positions):
        gold = st.hidden_L[p]
        scale = gold.norm() / m.d_model ** 0.5
        v = torch.randn(n_var, m.d_model, generator=g, dtype=torch.float64).to(m.dtype) * scale
        v[0] = gold  # clean state re-patched
        v[1] = gold + 0.3 * v[1]  # a reconstruction-like perturbation
        v[2] = 0  # zero ablation
        sites.append(SiteVariants(k, p, [f"v{i}" for i in range(n_var)], v))
    return ids, sites


def max_diff(a, b):
    """Largest |fast - naive| over every site, variant and kept offset (KL, CE)."""
    dk = max(float(np.nanmax(np.abs(x.kl - y.kl))) for x, y in zip(a, b))
    dc = max(float(np.nanmax(np.abs(x.ce - y.ce))) for x, y in zip(a, b))
    for x, y in zip(a, b):
        assert np.array_equal(np.isnan(x.kl), np.isnan(y.kl)) and np.array_equal(x.valid, y.valid)
    return dk, dc


@pytest.mark.parametrize("fixture", ["gemma3_dir", "gemma3_mm_dir", "llama_dir", "qwen2_dir"])
def test_fast_equals_naive_float32(fixture, request):
    m = load_model(request.getfixturevalue(fixture), dtype="float32")
    ids, sites = doc_and_sites(m)
    naive = patch_document(m, ids, LAYER, sites, "naive")
    fast = patch_document(m, ids, LAYER, sites, "fast", sites_per_batch=4)
    dk, dc = max_diff(fast, naive)
    assert dk < 1e-4 and dc < 1e-4, (dk, dc)
    assert max(float(np.nanmax(r.kl)) for r in naive) > 0.1  # the test has something to detect


@pytest.mark.parametrize("fixture", ["gemma3_dir", "gemma3_mm_dir", "llama_dir"])
def test_fast_equals_naive_float64(fixture, request):
    with gemma_norm_in_input_dtype():
        m = load_model(request.getfixturevalue(fixture), dtype="float64")
        ids, sites = doc_and_sites(m, n_var=4)
        naive = patch_document(m, ids, LAYER, sites, "naive")
        fast = patch_document(m, ids, LAYER, sites, "fast", sites_per_batch=3)
    dk, dc = max_diff(fast, naive)
    assert dk < 1e-9 and dc < 1e-9, (dk, dc)


@pytest.fixture(scope="module")
def gemma_case(gemma3_dir):
    m = load_model(gemma3_dir, dtype="float32")
    ids, sites = doc_and_sites(m, n_var=4)
    naive = [naive_site(m, ids, LAYER, s) for s in sites]
    return m, ids, sites, naive


@pytest.mark.parametrize("trap", sorted(ABLATIONS))
def test_each_trap_is_caught(gemma_case, trap):
    """Leaving out any one of the four things the fast path must get right breaks equality."""
    m, ids, sites, naive = gemma_case
    state = clean_pass(m, ids, LAYER)
    ablated = fast_sites(m, ids, LAYER, sites, state, ablate={trap})
    dk, _ = max_diff(ablated, naive)
    assert dk > 1e-2, f"removing {trap} changed KL by only {dk}"
    correct = fast_sites(m, ids, LAYER, sites, state)
    assert max_diff(correct, naive)[0] < 1e-4


def test_clean_repatch_is_zero_and_earlier_positions_untouched(gemma_case):
    m, ids, sites, _ = gemma_case
    fast = patch_document(m, ids, LAYER, sites, "fast")
    for r in [r for r in fast if r.valid.any()]:
        assert np.nanmax(np.abs(r.kl[0])) < 1e-5  # variant 0 is the clean state itself
        assert np.nanmax(np.abs(r.delta_ce[0])) < 1e-4
    # naive path: logits before p are bit-identical to the clean forward's
    p = sites[6].position
    x = torch.tensor([ids[: p + 32]])
    clean = m.model(input_ids=x).logits
    h = m.layers[LAYER].register_forward_hook(lambda mod, i, o: _replace(o, p, torch.zeros(m.d_model)))
    patched = m.model(input_ids=x).logits
    h.remove()
    assert torch.equal(clean[0, :p], patched[0, :p]) and not torch.allclose(clean[0, p], patched[0, p])


def _replace(out, p, v):
    out = out.clone()
    out[:, p] = v
    return out


def test_readout_against_direct_formulas():
    from scipy.special import log_softmax, rel_entr

    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((3, 5, 11)), rng.standard_normal((3, 5, 11))
    la, lb = log_softmax(a, -1), log_softmax(b, -1)
    nxt = rng.integers(0, 11, (3, 5))
    valid = np.ones((3, 5), bool)
    valid[2, 3:] = False
    kl, ce, dce = readout(torch.tensor(la), torch.tensor(lb), torch.tensor(nxt), torch.tensor(valid))
    ref_kl = rel_entr(np.exp(la), np.exp(lb)).sum(-1)
    ref_ce = -np.take_along_axis(lb, nxt[..., None], -1)[..., 0]
    ref_dce = ref_ce + np.take_along_axis(la, nxt[..., None], -1)[..., 0]
    for got, ref in ((kl, ref_kl), (ce, ref_ce), (dce, ref_dce)):
        g = got.numpy()
        assert np.isnan(g[2, 3:]).all()
        np.testing.assert_allclose(g[valid], ref[valid], rtol=1e-5, atol=1e-6)


def test_results_table_drops_offsets_past_the_end(gemma_case):
    m, ids, sites, naive = gemma_case
    t = results_table(naive, route="r", include_clean=True)
    last = sites[-1]  # position T-1: no true next token at all
    assert last.site_id not in set(t["site_id"].to_pylist())
    s = sites[-2]  # T-20: offsets 0..18 have a next token
    rows = [o for sid, o, c in zip(t["site_id"].to_pylist(), t["offset"].to_pylist(), t["condition"].to_pylist()) if sid == s.site_id and c == "v0"]
    assert rows == list(range(len(ids) - s.position - 1))
    assert set(t["condition"].to_pylist()) == {"clean", "v0", "v1", "v2", "v3"}


@pytest.mark.parametrize("bad, msg", [
    (lambda s: SiteVariants(s.site_id, s.position, s.names, s.vectors[:, :-1]), "variant vectors of shape"),
    (lambda s: SiteVariants(s.site_id, s.position, s.names, s.vectors * float("nan")), "NaN or inf"),
    (lambda s: SiteVariants(s.site_id, 10_000, s.names, s.vectors), "position 10000 is out of range"),
])
def test_bad_variants_fail_before_model_work(gemma_case, bad, msg):
    m, ids, sites, _ = gemma_case
    with pytest.raises(CausalKLError, match=msg):
        patch_document(m, ids, LAYER, [sites[0], bad(sites[1])], "fast")
