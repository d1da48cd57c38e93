"""Splices at every hook inside a block, on every family: the fast path equals the naive one, and each hook is where
SAELens' name says.

The naive path is the independent reference here: a full forward per variant with a forward hook on the module the
family's table names (``models.at_hook``). The fast path runs block L itself in its window pass (clean input rows,
the hook's activation replaced at the span's rows) and blocks L+1.. as for the residual stream. Where each hook is is
checked against the blocks' arithmetic, with the model's own modules: zero at ``mlp_out`` leaves the block's output
at the site equal to the residual before the MLP (or, with GPT-NeoX's parallel residual, the block's input plus
the attention's output), and the activation recorded at ``resid_mid`` plus the one at ``mlp_out`` is the block's
output.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from causal_kl import families
from causal_kl.errors import CausalKLError
from causal_kl.hooks import SUBLAYER_HOOKS
from causal_kl.models import at_hook, load_model
from causal_kl.patching import CleanCache, SiteVariants, clean_pass, naive_site, patch_document, window_start
from test_families import float64_reference
from test_patching import LAYER, gemma_norm_in_input_dtype, max_diff
import fixtures

ALL = ["gemma3", "llama", "qwen2", "gemma2", "gpt2", "gpt_neox", "mistral", "qwen3", "gemma", "qwen3_moe", "gpt_oss"]
NAIVE_ONLY = ["qwen3_5", "qwen3_5_moe"]
"""Linear-attention families: the naive path patches them (test_families), so only where each hook is is checked."""
BASE = {"gemma3": "gemma3_dir", "llama": "llama_dir", "qwen2": "qwen2_dir"}


def model_dir(request, model_type: str):
    if model_type in BASE:
        return request.getfixturevalue(BASE[model_type])
    return request.getfixturevalue("family_dirs")(model_type)


def hooks_of(m) -> list[str]:
    return [h for h in families.hook_modules(m.family, m.text_config) if h in SUBLAYER_HOOKS]


def recorded(m, ids, layer: int, hooks) -> dict[str, torch.Tensor]:
    """The clean activation at each hook of block ``layer``: ``{hook: [T, width]}``, from one plain forward."""
    out: dict[str, torch.Tensor] = {}
    x = torch.tensor([list(ids)], device=m.device)
    import contextlib

    with contextlib.ExitStack() as stack:
        for h in hooks:
            stack.enter_context(at_hook(m, layer, h, lambda a, h=h: out.__setitem__(h, a.detach()[0].clone())))
        m.model(input_ids=x, use_cache=False)
    return out


def hook_sites(m, ids, hook: str, act: torch.Tensor, span: int, n_var: int = 4, seed: int = 0) -> list[SiteVariants]:
    """Sites before, at and past the sliding-window edge (W = 24) and at the end; variants: the clean activation,
    a perturbed one, zero, and noise at the activation's scale."""
    T = len(ids)
    g = torch.Generator().manual_seed(seed)
    sites = []
    for i, p in enumerate([3, 23, 25, 47, T - 33 - (span - 1), T - span]):
        clean = act[p: p + span]  # [k, width]
        scale = clean.norm(dim=-1, keepdim=True) / clean.shape[-1] ** 0.5 + 1e-3
        v = torch.randn(n_var, span, clean.shape[-1], generator=g, dtype=torch.float64).to(m.dtype) * scale * 3
        v[0] = clean
        v[1] = clean + 0.5 * v[1]
        v[2] = 0
        sites.append(SiteVariants(i, p, [f"v{j}" for j in range(n_var)], v[:, 0] if span == 1 else v))
    return sites


def document(m):
    ids = m.tokenizer(fixtures.make_texts(1, (24, 26), seed=1)[0]).input_ids[:260]
    assert len(ids) > 47 + 33 + 4
    return ids


@pytest.mark.parametrize("span", [1, 4])
@pytest.mark.parametrize("model_type", ALL)
def test_fast_equals_naive_at_every_hook_float32(model_type, span, request):
    m = load_model(model_dir(request, model_type), dtype="float32")
    ids = document(m)
    hooks = hooks_of(m)
    assert set(hooks) == set(SUBLAYER_HOOKS) - ({"resid_mid"} if model_type == "gpt_neox" else set())
    acts = recorded(m, ids, LAYER, hooks)
    cache = CleanCache()
    for hook in hooks:
        assert acts[hook].shape[-1] == m.hook_width(hook), hook
        sites = hook_sites(m, ids, hook, acts[hook], span)
        naive = [naive_site(m, ids, LAYER, s, hook) for s in sites]
        fast = patch_document(m, ids, LAYER, sites, "fast", sites_per_batch=3, clean_cache=cache, hook=hook)
        dk, dc = max_diff(fast, naive)
        assert dk < 1e-4 and dc < 1e-4, (model_type, hook, dk, dc)
        moved = max(float(np.nanmax(r.kl[1:])) for r in naive if r.valid.any())
        assert moved > 1e-3, (model_type, hook, moved)  # the variants move the model: there is something to detect
        resplice = max(float(np.nanmax(r.kl[0])) for r in fast if r.valid.any())
        assert resplice < 1e-5, (model_type, hook, resplice)  # the clean activation spliced back changes nothing
    # every hook inside block L shares one clean pass (the window starts at block L for all of them)
    assert cache.clean_passes == 1 and window_start(LAYER, hooks[0]) == LAYER


@pytest.mark.parametrize("model_type", ALL)
def test_fast_equals_naive_at_every_hook_float64(model_type, request):
    """Every family, every hook; spans of 4 (their first position is a single-site splice's): exact to 1e-9."""
    with float64_reference(model_type), gemma_norm_in_input_dtype():
        m = load_model(model_dir(request, model_type), dtype="float64")
        ids = document(m)
        hooks = hooks_of(m)
        acts = recorded(m, ids, LAYER, hooks)
        for hook in hooks:
            sites = hook_sites(m, ids, hook, acts[hook], 4, n_var=3)[1:4]
            naive = [naive_site(m, ids, LAYER, s, hook) for s in sites]
            fast = patch_document(m, ids, LAYER, sites, "fast", sites_per_batch=3, hook=hook)
            dk, dc = max_diff(fast, naive)
            assert dk < 1e-9 and dc < 1e-9, (model_type, hook, dk, dc)


@pytest.mark.parametrize("model_type", ALL + NAIVE_ONLY)
def test_hooks_are_where_the_block_computes_them(model_type, request):
    """Block L's output = resid_mid + mlp_out (sequential blocks), = input + attn_out + mlp_out (parallel residual),
    resid_mid = input + attn_out; zero at mlp_out leaves resid_mid (or input + attn_out) as the block's output; the
    clean pass's window input for a hook inside block L is block L - 1's output."""
    m = load_model(model_dir(request, model_type), dtype="float32")
    ids = document(m)
    hooks = hooks_of(m)
    acts = recorded(m, ids, LAYER, hooks)
    x = torch.tensor([list(ids)])
    out = m.model(input_ids=x, output_hidden_states=True, use_cache=False).hidden_states
    block_in, block_out = out[LAYER][0], out[LAYER + 1][0]
    before_mlp = acts["resid_mid"] if "resid_mid" in acts else block_in + acts["attn_out"]
    torch.testing.assert_close(before_mlp + acts["mlp_out"], block_out, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(block_in + acts["attn_out"], acts.get("resid_mid", block_in + acts["attn_out"]), atol=1e-4, rtol=1e-4)
    p = 30
    got = {}
    with at_hook(m, LAYER, "mlp_out", lambda a: torch.where(torch.arange(a.shape[1])[None, :, None] == p, 0.0, a)), \
            at_hook(m, LAYER, "resid_post", lambda a: got.__setitem__("out", a.detach()[0].clone())):
        m.model(input_ids=x, use_cache=False)
    torch.testing.assert_close(got["out"][p], before_mlp[p], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got["out"][p + 1:], block_out[p + 1:], atol=1e-5, rtol=1e-5)  # only the site moves
    if model_type in NAIVE_ONLY:
        return
    state = clean_pass(m, ids, LAYER, "mlp_out")
    torch.testing.assert_close(state.hidden_L, block_in, atol=1e-5, rtol=1e-5)
    assert state.start == LAYER and min(state.keys) == LAYER


@pytest.mark.parametrize("model_type", ALL + NAIVE_ONLY)
def test_a_splice_at_resid_mid_is_what_the_residual_stream_carries(model_type, request):
    """Replacing resid_mid by R at a position: the MLP reads R and the block's output there is R + the MLP's output
    (TransformerLens' hook_resid_mid), not the old residual + mlp(R): the block's own sum is what changes, so both
    of its users see R. Checked with the model's own forward: the block's output and its MLP's output recorded under
    the splice; earlier positions do not move."""
    m = load_model(model_dir(request, model_type), dtype="float32")
    if "resid_mid" not in hooks_of(m):
        pytest.skip("no resid_mid (parallel residual)")
    ids = document(m)
    x = torch.tensor([list(ids)])
    p = 30
    R = torch.randn(m.d_model, generator=torch.Generator().manual_seed(5)) * 3
    got = {}
    splice = lambda a: torch.where(torch.arange(a.shape[1])[None, :, None] == p, R.to(a.dtype), a)  # noqa: E731
    with at_hook(m, LAYER, "resid_mid", splice), \
            at_hook(m, LAYER, "mlp_out", lambda a: got.__setitem__("mlp", a.detach()[0].clone())), \
            at_hook(m, LAYER, "resid_post", lambda a: got.__setitem__("out", a.detach()[0].clone())):
        m.model(input_ids=x, use_cache=False)
    clean = m.model(input_ids=x, output_hidden_states=True, use_cache=False).hidden_states[LAYER + 1][0]
    torch.testing.assert_close(got["out"][p], R + got["mlp"][p], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got["out"][:p], clean[:p], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got["out"][p], clean[p], atol=1e-2)


def test_a_hook_the_family_lacks_is_one_line(request):
    m = load_model(model_dir(request, "gpt_neox"), dtype="float32")
    ids = document(m)
    with pytest.raises(CausalKLError, match="no hook resid_mid.*in parallel") as e:
        patch_document(m, ids, LAYER, [SiteVariants(0, 5, ["a"], torch.zeros(1, m.d_model))], hook="resid_mid")
    assert "\n" not in str(e.value)
    with pytest.raises(CausalKLError, match="hook width"):
        patch_document(m, ids, LAYER, [SiteVariants(0, 5, ["a"], torch.zeros(1, m.d_model + 1))], hook="mlp_out")


@pytest.mark.parametrize("model_type", ["llama", "gemma3", "gpt2"])
def test_golds_at_points(model_type, request):
    """extract_states at several points of a sweep in one forward per document: resid_post = the model's own hidden
    states; resid_mid + mlp_out = the block's output; the output projection of attn_z = the attention's output (before
    Gemma's post-attention norm); the BlockStateCache gives the same vectors, and the second hook of a shard's block
    comes from the first job's forward."""
    from causal_kl.gold import BlockStateCache, extract_states
    from causal_kl.hooks import Point

    m = load_model(model_dir(request, model_type), dtype="float32")
    ids = document(m)
    docs = {"a": ids, "b": ids[:60]}
    doc_ids, positions = ["a", "a", "b", "a"], [3, 40, 59, 70]
    points = [Point(LAYER, h) for h in ("resid_mid", "attn_z", "attn_out", "mlp_out")] + [Point(LAYER), Point(LAYER - 1)]
    got = extract_states(m, docs, doc_ids, positions, points)
    hidden = {d: m.model(input_ids=torch.tensor([list(t)]), output_hidden_states=True, use_cache=False).hidden_states
              for d, t in docs.items()}
    want = lambda l: np.stack([hidden[d][l + 1][0, p].numpy() for d, p in zip(doc_ids, positions)])
    np.testing.assert_allclose(got[Point(LAYER)], want(LAYER), atol=1e-5)
    np.testing.assert_allclose(got[Point(LAYER - 1)], want(LAYER - 1), atol=1e-5)
    np.testing.assert_allclose(got[Point(LAYER, "resid_mid")] + got[Point(LAYER, "mlp_out")], want(LAYER), atol=1e-4)
    o_proj, _ = m.hook_module(LAYER, "attn_z")
    projected = o_proj(torch.from_numpy(got[Point(LAYER, "attn_z")])).detach().numpy()
    if model_type == "gemma3":
        projected = m.layers[LAYER].post_attention_layernorm(torch.from_numpy(projected)).detach().numpy()
    np.testing.assert_allclose(projected, got[Point(LAYER, "attn_out")], atol=1e-4)
    assert got[Point(LAYER, "attn_z")].shape[1] == m.hook_width("attn_z")
    cache = BlockStateCache()
    for p in (Point(LAYER, "mlp_out"), Point(LAYER), Point(LAYER - 1)):
        np.testing.assert_array_equal(cache.golds(m, docs, doc_ids, positions, p.layer, hook=p.hook), got[p])
    assert cache.forwards == 1 and cache.hits == 2


@pytest.mark.parametrize("model_type", ["gemma3", "gemma2", "gpt_neox", "mistral", "qwen3", "gpt2", "gemma", "qwen3_moe",
                                        "gpt_oss"])
def test_each_trap_at_a_hook_inside_the_block(model_type, request):
    """The window pass now runs block L too: each family's traps, left out at mlp_out (and attn_z), still move the
    numbers where the family has them, and only there."""
    from causal_kl.patching import fast_sites
    from test_families import CHECKED_TRAPS, TRAPS

    traps = {"gemma3": {"layer_idx", "sliding_mask", "local_rope", "softcap", "positions"}}.get(model_type, TRAPS.get(model_type))
    m = load_model(model_dir(request, model_type), dtype="float32")
    ids = document(m)
    for hook in ("mlp_out", "attn_z"):
        acts = recorded(m, ids, LAYER, [hook])
        sites = hook_sites(m, ids, hook, acts[hook], 1)
        naive = [naive_site(m, ids, LAYER, s, hook) for s in sites]
        state = clean_pass(m, ids, LAYER, hook)
        checked = sorted(set(CHECKED_TRAPS) | ({"layer_idx", "local_rope", "softcap"} if model_type == "gemma3" else set()))
        for trap in checked:
            moved = max_diff(fast_sites(m, ids, LAYER, sites, state, ablate={trap}, hook=hook), naive)[0]
            if trap in traps:
                assert moved > 1e-3, f"{model_type} at {hook}: removing {trap} changed KL by only {moved}"  # 10x the tolerance
            else:
                assert moved < 1e-4, (model_type, hook, trap, moved)
