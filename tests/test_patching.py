"""The fast patch path equals the naive reference (a full forward with a hook) on every KL and CE.

Fixtures: tiny Gemma-3 (sliding window 24 < document length, 2 sliding : 1 global, soft-cap 30
with the final norm raised so the cap is active), the multimodal Gemma-3 wrapper, Llama, Qwen2.
Spans of 1, 4 and 16 positions; sites and spans before, straddling and past the window edge,
and near the document's end.
"""
import contextlib

import numpy as np
import pytest
import torch

import fixtures
from causal_kl.errors import CausalKLError
from causal_kl.models import load_model
from causal_kl.patching import (ABLATIONS, CleanCache, SiteVariants, clean_pass, fast_sites, naive_site, patch_document,
                                patch_documents, readout, results_table)

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


def doc_and_sites(m, seed=0, n_var=8, span=1, n_words=(160, 200)):
    """A document and sites whose spans lie before, straddle and lie past the sliding-window edge
    (W = 24), end at the document's last token, or leave fewer than 32 readout offsets."""
    ids = m.tokenizer(fixtures.make_texts(1, n_words, seed=seed)[0]).input_ids[:260]
    T = len(ids)
    from causal_kl.gold import block_outputs

    states = block_outputs(m, ids, [LAYER])[LAYER]  # a plain forward: also for models the fast path cannot run
    g = torch.Generator().manual_seed(seed)
    k = span
    positions = [3, 10, 20, 23, 24, 25, 47, 120, T - 33 - (k - 1), T - 20 - (k - 1), T - k]
    sites = []
    for i, p in enumerate(positions):
        gold = states[p: p + k]  # [k, d]
        scale = gold.norm(dim=-1, keepdim=True) / m.d_model ** 0.5
        v = torch.randn(n_var, k, m.d_model, generator=g, dtype=torch.float64).to(m.dtype) * scale
        v[0] = gold  # clean states re-patched
        v[1] = gold + 0.3 * v[1]  # a reconstruction-like perturbation
        v[2] = 0  # zero ablation
        sites.append(SiteVariants(i, p, [f"v{j}" for j in range(n_var)], v[:, 0] if span == 1 else v))
    return ids, sites


def max_diff(a, b):
    """Largest |fast - naive| over every site, variant and kept offset (KL, CE)."""
    for x, y in zip(a, b):
        assert np.array_equal(np.isnan(x.kl), np.isnan(y.kl)) and np.array_equal(x.valid, y.valid)
        assert np.array_equal(x.offsets, y.offsets) and x.span == y.span
    dk = max((float(np.abs(x.kl - y.kl)[:, x.valid].max()) for x, y in zip(a, b) if x.valid.any()), default=0.0)
    dc = max((float(np.abs(x.ce - y.ce)[:, x.valid].max()) for x, y in zip(a, b) if x.valid.any()), default=0.0)
    return dk, dc


ARCHS = ["gemma3_dir", "gemma3_mm_dir", "llama_dir", "qwen2_dir"]


@pytest.mark.parametrize("span", [1, 4, 16])
@pytest.mark.parametrize("fixture", ARCHS)
def test_fast_equals_naive_float32(fixture, span, request):
    m = load_model(request.getfixturevalue(fixture), dtype="float32")
    ids, sites = doc_and_sites(m, span=span)
    naive = patch_document(m, ids, LAYER, sites, "naive")
    fast = patch_document(m, ids, LAYER, sites, "fast", sites_per_batch=4)
    dk, dc = max_diff(fast, naive)
    assert dk < 1e-4 and dc < 1e-4, (dk, dc)
    assert max(float(np.nanmax(r.kl)) for r in naive if r.valid.any()) > 0.1  # the test has something to detect
    assert all(r.kl.shape == (8, span - 1 + 32) for r in fast)


@pytest.mark.parametrize("span", [1, 4, 16])
@pytest.mark.parametrize("fixture", ARCHS)
def test_fast_equals_naive_float64(fixture, span, request):
    with gemma_norm_in_input_dtype():
        m = load_model(request.getfixturevalue(fixture), dtype="float64")
        ids, sites = doc_and_sites(m, n_var=4, span=span)
        naive = patch_document(m, ids, LAYER, sites, "naive")
        fast = patch_document(m, ids, LAYER, sites, "fast", sites_per_batch=3)
    dk, dc = max_diff(fast, naive)
    assert dk < 1e-9 and dc < 1e-9, (dk, dc)


@pytest.fixture(scope="module", params=[1, 4, 16])
def gemma_case(gemma3_dir, request):
    m = load_model(gemma3_dir, dtype="float32")
    ids, sites = doc_and_sites(m, n_var=4, span=request.param)
    naive = [naive_site(m, ids, LAYER, s) for s in sites]
    return m, ids, sites, naive


@pytest.mark.parametrize("trap", sorted(ABLATIONS))
def test_each_trap_is_caught(gemma_case, trap):
    """Leaving out any one of the four things the fast path must get right breaks equality (spans of 1, 4, 16)."""
    m, ids, sites, naive = gemma_case
    state = clean_pass(m, ids, LAYER)
    ablated = fast_sites(m, ids, LAYER, sites, state, ablate={trap})
    dk, _ = max_diff(ablated, naive)
    assert dk > 1e-2, f"removing {trap} changed KL by only {dk}"
    correct = fast_sites(m, ids, LAYER, sites, state)
    assert max_diff(correct, naive)[0] < 1e-4


def test_span_of_one_is_the_single_site_splice(gemma3_dir):
    """[V, d] and [V, 1, d] vectors give bit-identical numbers on both paths (offsets 0..31, span 1)."""
    m = load_model(gemma3_dir, dtype="float32")
    ids, sites = doc_and_sites(m, n_var=4, span=1)
    as_span = [SiteVariants(s.site_id, s.position, s.names, s.vectors[:, None]) for s in sites]
    for method in ("fast", "naive"):
        a = patch_document(m, ids, LAYER, sites, method, sites_per_batch=4)
        b = patch_document(m, ids, LAYER, as_span, method, sites_per_batch=4)
        for x, y in zip(a, b):
            assert x.span == y.span == 1 and list(x.offsets) == list(range(32))
            for f in ("kl", "ce", "delta_ce", "clean_ce", "valid"):
                np.testing.assert_array_equal(getattr(x, f), getattr(y, f))


def test_sites_batched_across_documents(gemma3_dir):
    """patch_documents mixes documents in one window batch; each equals its own document's naive result."""
    m = load_model(gemma3_dir, dtype="float32")
    docs = [doc_and_sites(m, seed=s, n_var=4, span=k, n_words=(40 + 60 * s, 60 + 60 * s)) for s, k in ((0, 4), (1, 4), (2, 4), (3, 1))]
    docs = [(ids, [s for s in sites if 0 <= s.position and s.position + s.span <= len(ids)][:5]) for ids, sites in docs]
    fast = patch_documents(m, docs, LAYER, "fast", sites_per_batch=7)
    for (ids, sites), res in zip(docs, fast):
        naive = [naive_site(m, ids, LAYER, s) for s in sites]
        assert [r.site_id for r in res] == [s.site_id for s in sites]
        assert max_diff(res, naive)[0] < 1e-4


def test_clean_cache_shares_the_clean_pass(gemma3_dir, caplog):
    """Two calls on one document through one CleanCache: one clean pass, results identical to uncached calls."""
    import logging

    m = load_model(gemma3_dir, dtype="float32")
    ids, sites = doc_and_sites(m, n_var=4, span=4)
    cache = CleanCache()
    with caplog.at_level(logging.INFO, logger="causal_kl.patching"):
        a = patch_document(m, ids, LAYER, sites[:6], clean_cache=cache)
        b = patch_document(m, ids, LAYER, sites[:6], clean_cache=cache)
    assert cache.clean_passes == 1 and cache.hits == 1 and len(cache) == 1
    assert sum("clean pass" in r.getMessage() for r in caplog.records) == 1
    ref = [patch_document(m, ids, LAYER, sites[:6]) for _ in range(2)]
    for got, want in zip((a, b), ref):
        for x, y in zip(got, want):
            for f in ("kl", "ce", "delta_ce", "clean_ce"):
                np.testing.assert_array_equal(getattr(x, f), getattr(y, f))
    # another layer, another model dtype or other tokens are other entries; the byte bound evicts the oldest
    patch_document(m, ids, LAYER + 1, sites[:2], clean_cache=cache)
    patch_document(m, ids[:-1], LAYER, sites[:2], clean_cache=cache)
    assert cache.clean_passes == 3 and len(cache) == 3
    one = cache.bytes_on("cpu") // 3
    small = CleanCache(max_bytes=int(one * 1.5))
    for L in (LAYER, LAYER + 1, LAYER):
        patch_document(m, ids, L, sites[:2], clean_cache=small)
    assert small.clean_passes == 3 and len(small) == 1 and small.bytes_on("cpu") <= small.max_bytes


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
    """PATCH columns plus span (int32); offsets from the span's last position, inside-span ones negative."""
    import pyarrow as pa

    from causal_kl.contracts import PATCH

    m, ids, sites, naive = gemma_case
    k = sites[0].span
    t = results_table(naive, route="r", include_clean=True)
    assert t.schema.names == PATCH.names and PATCH.names[-1] == "span" and t.schema.field("span").type == pa.int32()
    PATCH.check(t, "test")
    assert set(t["span"].to_pylist()) == {k}

    def offsets(site):
        return [o for sid, o, c in zip(t["site_id"].to_pylist(), t["offset"].to_pylist(), t["condition"].to_pylist())
                if sid == site.site_id and c == "v0"]

    assert offsets(sites[-1]) == list(range(-(k - 1), 0))  # the span ends at the last token: no offset >= 0
    s = sites[-2]  # offsets up to T - p - k - 1 have a next token
    assert offsets(s) == list(range(-(k - 1), len(ids) - s.position - k))
    assert offsets(sites[0]) == list(range(-(k - 1), 32))
    assert set(t["condition"].to_pylist()) == {"clean", "v0", "v1", "v2", "v3"}


@pytest.mark.parametrize("bad, msg", [
    (lambda s: SiteVariants(s.site_id, s.position, s.names, s.vectors[..., :-1]), "variant vectors of shape"),
    (lambda s: SiteVariants(s.site_id, s.position, s.names, s.vectors * float("nan")), "NaN or inf"),
    (lambda s: SiteVariants(s.site_id, 10_000, s.names, s.vectors), "10000.* is out of range"),
    (lambda s: SiteVariants(s.site_id, 250, s.names, torch.zeros(4, 16, s.vectors.shape[-1])), "span 250..265 is out of range"),
])
def test_bad_variants_fail_before_model_work(gemma_case, bad, msg):
    m, ids, sites, _ = gemma_case
    with pytest.raises(CausalKLError, match=msg):
        patch_document(m, ids, LAYER, [sites[0], bad(sites[1])], "fast")
