"""SAEs and transcoders at every hook of a block: what their files say, what they compute, and what a route refuses.

The computations are checked against SAELens itself (sae-lens 6.54): its own ``Transcoder``, ``SkipTranscoder``,
``JumpReLUTranscoder``, ``JumpReLUSkipTranscoder`` and hook_z ``StandardSAE`` objects with random weights, saved with
its own ``save_model`` and run with its own ``forward``; Gemma Scope 2 transcoder folders are read by its own gemma_3
loader from a hub cache laid out as the hub has them. The refusals are one line each.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from causal_kl.errors import CausalKLError
from causal_kl.hooks import Point
from causal_kl.routes.sae import check_sae_config, reconstruct, route_points
from causal_kl.sae import load_sae
from causal_kl.sae_format import parse_hook_name

from fixtures import lay_out_hub_cache

sae_lens = pytest.importorskip("sae_lens")
from sae_lens.saes.sae import SAEMetadata  # noqa: E402

D, D_SAE, N = 16, 40, 64
LAYER = 2
LLAMA = {"model_type": "llama", "hidden_size": D, "num_attention_heads": 4, "head_dim": 8}  # attn.hook_z: 4 x 8 = 32
GEMMA3 = {"model_type": "gemma3_text", "hidden_size": D, "num_attention_heads": 2, "head_dim": 12}  # 2 x 12 = 24
NEOX = {"model_type": "gpt_neox", "hidden_size": D, "num_attention_heads": 4, "use_parallel_residual": True}

TRANSCODERS = {
    "transcoder": sae_lens.TranscoderConfig, "skip_transcoder": sae_lens.SkipTranscoderConfig,
    "jumprelu_transcoder": sae_lens.JumpReLUTranscoderConfig, "jumprelu_skip_transcoder": sae_lens.JumpReLUSkipTranscoderConfig,
}
CLASSES = {"transcoder": sae_lens.Transcoder, "skip_transcoder": sae_lens.SkipTranscoder,
           "jumprelu_transcoder": sae_lens.JumpReLUTranscoder, "jumprelu_skip_transcoder": sae_lens.JumpReLUSkipTranscoder}


def _one_line_error(excinfo, *parts):
    msg = str(excinfo.value)
    assert "\n" not in msg and "Fix:" in msg, msg
    for part in parts:
        assert part in msg, (part, msg)


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Random weights in place (SAELens initialises biases, thresholds and W_skip to zeros); thresholds > 0, so that
    the JumpReLU cuts some latents that ReLU would keep."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name == "threshold":
                p.copy_(torch.rand(p.shape, generator=g) * 0.8 + 0.05)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.4)


def saelens_transcoder(path: Path, arch: str, d_out: int = D, hook_in: str = f"blocks.{LAYER}.hook_mlp_in",
                       hook_out: str = f"blocks.{LAYER}.hook_mlp_out", seed: int = 0):
    cfg = TRANSCODERS[arch](d_in=D, d_sae=D_SAE, d_out=d_out, apply_b_dec_to_input=False,
                            metadata=SAEMetadata(hook_name=hook_in, hook_name_out=hook_out))
    tc = CLASSES[arch](cfg)
    _randomise(tc, seed)
    tc.eval()
    tc.save_model(path)
    return tc


def saelens_sae(path: Path, hook: str, d_in: int = D, seed: int = 0, **cfg_kw):
    sae = sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=d_in, d_sae=D_SAE, metadata=SAEMetadata(hook_name=hook), **cfg_kw))
    _randomise(sae, seed)
    sae.eval()
    sae.save_model(path)
    return sae


@pytest.fixture
def x():
    return np.random.default_rng(1).normal(size=(N, D)).astype(np.float32)


def _entry(path, **kw):
    return {"kind": "sae", "path": str(path), "check_hook": True, "batch_size": 4096, **kw}  # one batch, as SAELens runs it


# ---------------------------------------------------------------------------------------- hook names
def test_hook_names_at_every_hook():
    for name, point in (("blocks.3.hook_mlp_out", Point(3, "mlp_out")), ("blocks.3.attn.hook_z", Point(3, "attn_z")),
                        ("blocks.3.ln2.hook_normalized", Point(3, "mlp_in")), ("blocks.3.hook_resid_mid", Point(3, "resid_mid")),
                        ("blocks.3.hook_resid_pre", Point(2)), ("model.layers.3.output", Point(3)),
                        ("model.layers.3.post_feedforward_layernorm.output", Point(3, "mlp_out")),
                        ("model.layers.3.pre_feedforward_layernorm.output", Point(3, "mlp_in")),
                        ("model.layers.3.self_attn.o_proj.input", Point(3, "attn_z"))):
        assert parse_hook_name(name).point == point, name
    # the residual layer stays the design's layer, and only for the residual stream
    assert parse_hook_name("blocks.3.hook_mlp_out").layer is None and parse_hook_name("blocks.3.hook_resid_pre").layer == 2
    # a module whose output is a hook in one family and not in another: the family's table decides
    from causal_kl.families import GEMMA_HOOKS, LLAMA_HOOKS

    assert parse_hook_name("layers.3.mlp", LLAMA_HOOKS).point == Point(3, "mlp_out")
    assert parse_hook_name("layers.3.mlp", GEMMA_HOOKS).point is None  # Gemma's MLP output is normed again
    assert parse_hook_name("hook_embed").point is None


# ------------------------------------------------------------------------- transcoders, against SAELens
@pytest.mark.parametrize("arch", list(TRANSCODERS))
def test_transcoders_match_saelens(tmp_path, x, arch):
    d_out = 24
    theirs = saelens_transcoder(tmp_path / arch, arch, d_out=d_out, hook_out=f"blocks.{LAYER}.hook_resid_post")
    ours = load_sae(tmp_path / arch)
    assert (ours.architecture, ours.d_in, ours.d_out, ours.d_sae) == (arch, D, d_out, D_SAE)
    assert (ours.point_in, ours.point_out) == (Point(LAYER, "mlp_in"), Point(LAYER))
    assert (ours.hook_name, ours.hook_name_out) == (f"blocks.{LAYER}.hook_mlp_in", f"blocks.{LAYER}.hook_resid_post")
    xt = torch.from_numpy(x)
    with torch.no_grad():
        want = theirs(xt).numpy()  # decode(encode(x)) (+ x @ W_skip.T for the skip transcoders)
        acts = theirs.encode(xt)
    got = ours.reconstruct(x).numpy()
    assert got.shape == (N, d_out)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ours.decode(ours.encode(x), x).numpy(), want, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(ours.encode(x).numpy() != 0, acts.numpy() != 0)
    if "jumprelu" in arch:  # the thresholds cut latents ReLU keeps, so the JumpReLU is exercised
        pre = (xt @ theirs.W_enc + theirs.b_enc).detach()
        assert bool(((pre > 0) & (pre <= theirs.threshold.detach())).any())
    stats = ours.sparsity(x)
    assert stats.l0 == pytest.approx(float((acts != 0).sum()) / N)
    assert stats.n_dead == int(((acts != 0).sum(0) == 0).sum())


def test_transcoder_route_reconstructs_and_gives_its_points(tmp_path, x):
    theirs = saelens_transcoder(tmp_path / "tc", "skip_transcoder")
    entry = _entry(tmp_path / "tc")
    assert route_points(entry, "s", LAYER, LLAMA, "config.yaml") == (Point(LAYER, "mlp_in"), Point(LAYER, "mlp_out"))
    targets = np.random.default_rng(3).normal(size=(N, D)).astype(np.float32)
    recon, stats = reconstruct(entry, LAYER, x, model_config=LLAMA, targets=targets)
    with torch.no_grad():
        want = theirs(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(recon, want, rtol=1e-6, atol=1e-6)
    assert (stats["architecture"], stats["d_out"], stats["hook_name_out"]) == ("skip_transcoder", D, f"blocks.{LAYER}.hook_mlp_out")
    mse = ((targets.astype(np.float64) - want) ** 2).sum(1).mean()
    var = (targets.astype(np.float64) ** 2).sum(1).mean() - (targets.astype(np.float64).mean(0) ** 2).sum()
    assert stats["explained_variance"] == pytest.approx(1 - mse / var, rel=1e-5)


def test_hook_z_sae_matches_saelens(tmp_path):
    d_z = LLAMA["num_attention_heads"] * LLAMA["head_dim"]
    theirs = saelens_sae(tmp_path / "z", f"blocks.{LAYER}.attn.hook_z", d_in=d_z, reshape_activations="hook_z")
    z = np.random.default_rng(2).normal(size=(N, 4, 8)).astype(np.float32)  # [n, heads, head_dim], as TransformerLens gives it
    with torch.no_grad():
        want = theirs(torch.from_numpy(z)).numpy().reshape(N, d_z)
    ours = load_sae(tmp_path / "z")
    assert ours.point_in == Point(LAYER, "attn_z") and ours.hook_z and ours.d_in == d_z
    np.testing.assert_allclose(ours.reconstruct(z.reshape(N, d_z)).numpy(), want, rtol=1e-6, atol=1e-6)
    assert route_points(_entry(tmp_path / "z"), "s", LAYER, LLAMA, "config.yaml") == (Point(LAYER, "attn_z"),) * 2
    recon, _ = reconstruct(_entry(tmp_path / "z"), LAYER, z.reshape(N, d_z), model_config=LLAMA)
    np.testing.assert_allclose(recon, want, rtol=1e-6, atol=1e-6)


def test_mlp_out_sae_route_points(tmp_path, x):
    theirs = saelens_sae(tmp_path / "mlp", f"blocks.{LAYER}.hook_mlp_out")
    assert route_points(_entry(tmp_path / "mlp"), "s", LAYER, GEMMA3, "config.yaml") == (Point(LAYER, "mlp_out"),) * 2
    recon, stats = reconstruct(_entry(tmp_path / "mlp"), LAYER, x, model_config=GEMMA3)
    with torch.no_grad():
        np.testing.assert_allclose(recon, theirs(torch.from_numpy(x)).numpy(), rtol=1e-6, atol=1e-6)
    assert stats["hook_name"] == f"blocks.{LAYER}.hook_mlp_out"


# ---------------------------------------------------------------------------------- Gemma Scope 2
def _gemma_scope_2_files(rng, affine: bool, d_out: int = D) -> dict[str, np.ndarray]:
    t = {"w_enc": rng.normal(0, 0.4, (D, D_SAE)), "b_enc": rng.normal(0, 0.3, D_SAE), "w_dec": rng.normal(0, 0.4, (D_SAE, d_out)),
         "b_dec": rng.normal(0, 0.3, d_out), "threshold": rng.uniform(0.05, 0.8, D_SAE)}
    if affine:
        t["affine_skip_connection"] = rng.normal(0, 0.3, (D, d_out))
    return {k: v.astype(np.float32) for k, v in t.items()}


@pytest.mark.parametrize("affine", [False, True])
def test_gemma_scope_2_transcoder_as_saelens_reads_it(tmp_path, monkeypatch, x, affine):
    from huggingface_hub import constants
    from safetensors.numpy import save as save_bytes
    from sae_lens.loading import pretrained_sae_loaders as loaders

    from causal_kl.sae_format import safetensors_shapes

    repo, folder = "google/gemma-scope-2-270m-pt", f"transcoder/layer_{LAYER}_width_16k_l0_small" + ("_affine" if affine else "")
    t = _gemma_scope_2_files(np.random.default_rng(5), affine)
    config = {"architecture": "jump_relu", "model_name": "gemma-v3-270m-pt", "affine_connection": affine,
              "hf_hook_point_in": f"model.layers.{LAYER}.pre_feedforward_layernorm.output",
              "hf_hook_point_out": f"model.layers.{LAYER}.post_feedforward_layernorm.output"}
    cache = tmp_path / "hub"
    lay_out_hub_cache(cache, repo, {f"{folder}/params.safetensors": save_bytes(t), f"{folder}/config.json": json.dumps(config).encode()})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    snapshot = next((cache / ("models--" + repo.replace("/", "--")) / "snapshots").iterdir()) / folder
    # SAELens reads the header over HTTP: the same header, read from the cached file
    monkeypatch.setattr(loaders, "get_safetensors_tensor_shapes",
                        lambda repo_id, filename: {k: list(v) for k, v in safetensors_shapes(snapshot / "params.safetensors").items()})
    cfg, state, _ = loaders.gemma_3_sae_huggingface_loader(repo, folder, device="cpu")
    theirs = CLASSES[cfg["architecture"]].from_dict(cfg)
    theirs.load_state_dict(state)
    theirs.eval()

    entry = {"kind": "sae", "repo": repo, "folder": folder}
    ours = load_sae(snapshot)
    assert ours.architecture == cfg["architecture"] == ("jumprelu_skip_transcoder" if affine else "jumprelu_transcoder")
    assert (ours.hook_name, ours.hook_name_out) == (cfg["hook_name"], cfg["hook_name_out"])
    assert (ours.d_in, ours.d_out) == (cfg["d_in"], cfg["d_out"])
    with torch.no_grad():
        want = theirs(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours.reconstruct(x).numpy(), want, rtol=1e-6, atol=1e-6)
    assert route_points(entry, "s", LAYER, GEMMA3, "config.yaml") == (Point(LAYER, "mlp_in"), Point(LAYER, "mlp_out"))
    recon, _ = reconstruct(entry, LAYER, x, model_config=GEMMA3)
    np.testing.assert_allclose(recon, want, rtol=1e-6, atol=1e-6)


def test_gemma_scope_1_attention_and_mlp_repos(tmp_path):
    rng = np.random.default_rng(0)
    d_z = GEMMA3["num_attention_heads"] * GEMMA3["head_dim"]
    for repo, d_in, point in (("gemma-scope-2b-pt-att", d_z, Point(LAYER, "attn_z")), ("gemma-scope-2b-pt-mlp", D, Point(LAYER, "mlp_out"))):
        folder = tmp_path / repo / f"layer_{LAYER}" / "width_16k" / "average_l0_10"
        folder.mkdir(parents=True)
        np.savez(folder / "params.npz", W_enc=rng.normal(size=(d_in, D_SAE)), W_dec=rng.normal(size=(D_SAE, d_in)),
                 b_enc=rng.normal(size=D_SAE), b_dec=rng.normal(size=d_in), threshold=rng.uniform(size=D_SAE))
        assert load_sae(folder).point_in == point
        assert route_points(_entry(folder), "s", LAYER, GEMMA3, "config.yaml") == (point, point)
    with pytest.raises(CausalKLError) as e:  # the attention SAE is 24 wide: a model with 4 x 8 heads is not its model
        route_points(_entry(tmp_path / "gemma-scope-2b-pt-att" / f"layer_{LAYER}" / "width_16k" / "average_l0_10"), "s", LAYER,
                     {**GEMMA3, "num_attention_heads": 4, "head_dim": 8}, "config.yaml")
    _one_line_error(e, "params.npz", "d_in", "attn.hook_z", "width 24", "4 heads x head_dim = 32")


# ------------------------------------------------------------------------------------------ refusals
def test_refusals(tmp_path):
    rp = lambda path, model=LLAMA, layer=LAYER, **kw: route_points(_entry(path, **kw), "s", layer, model, "config.yaml")  # noqa: E731

    # a hook the model's family lacks: GPT-NeoX's parallel blocks have no residual between attention and MLP
    saelens_sae(tmp_path / "mid", f"blocks.{LAYER}.hook_resid_mid")
    assert rp(tmp_path / "mid") == (Point(LAYER, "resid_mid"),) * 2
    with pytest.raises(CausalKLError) as e:
        rp(tmp_path / "mid", NEOX)
    _one_line_error(e, "cfg.json", "hook_name", "has no hook resid_mid", "parallel")

    # a transcoder whose output width is not its output hook's
    saelens_transcoder(tmp_path / "wide", "transcoder", d_out=D + 4)
    with pytest.raises(CausalKLError) as e:
        rp(tmp_path / "wide")
    _one_line_error(e, "cfg.json", "d_out", f"width {D + 4}", f"blocks.{LAYER}.hook_mlp_out", f"width {D}")

    # a hook_z SAE whose width is not heads x head_dim (a residual-width one)
    saelens_sae(tmp_path / "z16", f"blocks.{LAYER}.attn.hook_z", d_in=D)
    with pytest.raises(CausalKLError) as e:
        rp(tmp_path / "z16")
    _one_line_error(e, "cfg.json", "d_in", "attn.hook_z", f"width {D}", "4 heads x head_dim = 32")

    # another layer: refused, unless check_hook is false, which moves it (both points of a transcoder alike)
    saelens_transcoder(tmp_path / "tc", "jumprelu_transcoder")
    with pytest.raises(CausalKLError) as e:
        rp(tmp_path / "tc", layer=LAYER + 1)
    _one_line_error(e, "cfg.json", "hook_name", f"blocks.{LAYER}.hook_mlp_in", f"blocks.{LAYER + 1}.hook_mlp_in",
                    f"use it at layer {LAYER}", "routes.s.check_hook: false")
    assert rp(tmp_path / "tc", layer=LAYER + 1, check_hook=False) == (Point(LAYER + 1, "mlp_in"), Point(LAYER + 1, "mlp_out"))

    # another kind of hook than the route's: never moved, whatever check_hook says, and no check_hook fix offered
    saelens_sae(tmp_path / "mlp", f"blocks.{LAYER}.hook_mlp_out")
    for check_hook in (True, False):
        for call in (lambda ch: rp(tmp_path / "mlp", hook="attn_out", check_hook=ch),
                     lambda ch: check_sae_config(_entry(tmp_path / "mlp", check_hook=ch), "s", LAYER, D, "config.yaml")):
            with pytest.raises(CausalKLError) as e:
                call(check_hook)
            _one_line_error(e, "cfg.json", "hook_name", f"blocks.{LAYER}.hook_mlp_out", "never to another hook")
            assert "check_hook: false to splice" not in str(e.value)
    with pytest.raises(CausalKLError) as e:  # and the same at load time
        reconstruct(_entry(tmp_path / "mlp", check_hook=False), LAYER, np.zeros((3, D), np.float32))
    _one_line_error(e, "cfg.json", "hook_name", "never to another hook")

    # a route hook that is no hook
    with pytest.raises(CausalKLError) as e:
        rp(tmp_path / "mlp", hook="mlp_output")
    _one_line_error(e, "config.yaml", "routes.s.hook", "mlp_output")

    # a sparsify hookpoint a family does not have: Gemma's MLP output is normed again before the residual stream
    from test_sae_sparsify import sparsify_tensors, write_sparsify

    mlp = write_sparsify(tmp_path / "rel" / f"layers.{LAYER}.mlp", sparsify_tensors())
    d_sparsify = sparsify_tensors()["b_dec"].shape[0]
    assert rp(mlp, {**LLAMA, "hidden_size": d_sparsify}) == (Point(LAYER, "mlp_out"),) * 2
    with pytest.raises(CausalKLError) as e:
        rp(mlp, {**GEMMA3, "hidden_size": d_sparsify})
    _one_line_error(e, "cfg.json", "hook_name", f"layers.{LAYER}.mlp", "Gemma-3 has no module there")


@pytest.mark.parametrize("case", ["neox_resid_mid", "wide_transcoder", "other_layer"])
def test_route_points_and_load_time_agree(tmp_path, case):
    path, model, layer = {
        "neox_resid_mid": (lambda p: saelens_sae(p, f"blocks.{LAYER}.hook_resid_mid"), NEOX, LAYER),
        "wide_transcoder": (lambda p: saelens_transcoder(p, "transcoder", d_out=D + 4), LLAMA, LAYER),
        "other_layer": (lambda p: saelens_transcoder(p, "skip_transcoder"), LLAMA, LAYER + 1),
    }[case]
    path(tmp_path / case)
    with pytest.raises(CausalKLError) as parsed:
        route_points(_entry(tmp_path / case), "s", layer, model, "config.yaml")
    with pytest.raises(CausalKLError) as loaded:
        reconstruct(_entry(tmp_path / case), layer, np.zeros((3, D), np.float32), model_config=model)
    assert (parsed.value.file, parsed.value.field, parsed.value.problem) == (loaded.value.file, loaded.value.field, loaded.value.problem)
