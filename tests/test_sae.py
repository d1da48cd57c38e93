"""causal_kl.sae and causal_kl.demo.sae against a direct numpy implementation of the SAE formats.

``reference_sae`` below is written from the definitions (SAELens' saes/*.py, Gemma Scope's
JumpReLU), in float64, independently of the module. Where sae-lens is installed
(``pip install -e '.[sae]'``), the same files are also run through ``sae_lens.SAE.load_from_disk``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from causal_kl.demo.sae import SAETrainConfig, train_topk_sae, write_demo_sae
from causal_kl.errors import CausalKLError
from causal_kl.sae import (
    SparseAutoencoder,
    explained_variance,
    load_sae,
    parse_hook_name,
    save_sae,
    write_saelens_dir,
)

D_IN, D_SAE, N, K = 12, 40, 64, 5
ARCHS = ["standard", "jumprelu", "topk", "topk_rescaled"]
NORMS = ["none", "expected_average_only_in", "constant_norm_rescale", "layer_norm"]
SCALE = 0.37  # the expected_average_only_in factor written to activation_scaler.json


# --------------------------------------------------------------------------- the reference
def reference_sae(x, t, arch, apply_b_dec=True, norm="none", scale=None, k=K, rescale=False):
    """Latents ``[n, d_sae]`` and reconstructions ``[n, d_in]`` from the format's definition, float64."""
    x = np.asarray(x, np.float64)
    W_enc, b_enc, W_dec, b_dec = (np.asarray(t[n], np.float64) for n in ("W_enc", "b_enc", "W_dec", "b_dec"))
    if norm == "constant_norm_rescale":
        coeff = np.sqrt(x.shape[1]) / np.linalg.norm(x, axis=1, keepdims=True)
        sae_in = x * coeff
    elif norm == "layer_norm":
        mu = x.mean(axis=1, keepdims=True)
        std = (x - mu).std(axis=1, ddof=1, keepdims=True)
        sae_in = (x - mu) / (std + 1e-5)
    elif norm == "expected_average_only_in":
        sae_in = x * scale
    else:
        sae_in = x
    if apply_b_dec:
        sae_in = sae_in - b_dec
    pre = sae_in @ W_enc + b_enc
    dec_norms = np.linalg.norm(W_dec, axis=1)
    if arch == "standard":
        acts = np.maximum(pre, 0)
    elif arch == "jumprelu":
        acts = np.where(pre > np.asarray(t["threshold"], np.float64), np.maximum(pre, 0), 0.0)
    else:
        score = pre * dec_norms if rescale else pre
        acts = np.zeros_like(pre)
        for i in range(len(pre)):
            top = np.argsort(-score[i])[:k]
            acts[i, top] = np.maximum(score[i, top], 0)
    out = (acts / dec_norms if rescale else acts) @ W_dec + b_dec
    if norm == "constant_norm_rescale":
        out = out / coeff
    elif norm == "layer_norm":
        out = out * std + mu
    elif norm == "expected_average_only_in":
        out = out / scale
    return acts, out


def random_tensors(seed=0, d_in=D_IN, d_sae=D_SAE, dead=(3, 17)):
    rng = np.random.default_rng(seed)
    t = {
        "W_enc": rng.normal(0, 0.5, (d_in, d_sae)),
        "b_enc": rng.normal(0, 0.3, d_sae),
        "W_dec": rng.normal(0, 0.5, (d_sae, d_in)),
        "b_dec": rng.normal(0, 0.5, d_in),
        "threshold": rng.uniform(0.05, 0.6, d_sae),
    }
    t["b_enc"][list(dead)] = -1e3  # latents that never fire: the dead share is not trivially 0
    return {k: v.astype(np.float32) for k, v in t.items()}


@pytest.fixture(scope="module")
def tensors():
    return random_tensors()


@pytest.fixture(scope="module")
def x():
    rng = np.random.default_rng(1)
    # residual-like: a shared offset and norms that vary from row to row
    return (rng.normal(0, 1, (N, D_IN)) * rng.uniform(0.5, 3, (N, 1)) + 2.0).astype(np.float32)


def saelens_cfg_for(arch, apply_b_dec, norm, hook="blocks.2.hook_resid_post"):
    base = "topk" if arch.startswith("topk") else arch
    cfg = {"architecture": base, "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": apply_b_dec, "normalize_activations": norm, "reshape_activations": "none",
           "metadata": {"sae_lens_version": "6.54.12", "hook_name": hook, "hook_head_index": None}}
    if base == "topk":
        cfg["k"] = K
        cfg["rescale_acts_by_decoder_norm"] = arch == "topk_rescaled"
    return cfg


def write_case(tmp_path, tensors, arch, apply_b_dec, norm):
    names = ["W_enc", "b_enc", "W_dec", "b_dec"] + (["threshold"] if arch == "jumprelu" else [])
    return write_saelens_dir(tmp_path / f"{arch}-{apply_b_dec}-{norm}", {n: tensors[n] for n in names},
                             saelens_cfg_for(arch, apply_b_dec, norm),
                             scaling_factor=SCALE if norm == "expected_average_only_in" else None)


# ---------------------------------------------------------------- formats vs the reference
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("apply_b_dec", [True, False])
@pytest.mark.parametrize("arch", ARCHS)
def test_saelens_dir_matches_reference(tmp_path, tensors, x, arch, apply_b_dec, norm):
    path = write_case(tmp_path, tensors, arch, apply_b_dec, norm)
    sae = load_sae(path, d_model=D_IN, layer=2)
    acts_ref, out_ref = reference_sae(x, tensors, "topk" if arch.startswith("topk") else arch, apply_b_dec, norm,
                                      scale=SCALE, rescale=arch == "topk_rescaled")
    acts = sae.encode(x).numpy()
    np.testing.assert_allclose(acts, acts_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(acts != 0, acts_ref != 0)
    np.testing.assert_allclose(sae.decode(acts, x).numpy(), out_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(sae.reconstruct(x).numpy(), out_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(sae.reconstruct(x, batch_size=7).numpy(), out_ref, rtol=1e-4, atol=1e-4)
    stats = sae.sparsity(x, batch_size=10)
    assert stats.l0 == pytest.approx((acts_ref != 0).sum(axis=1).mean())
    assert stats.n_dead == int((~(acts_ref != 0).any(axis=0)).sum()) and stats.n_dead >= 2
    assert stats.dead_share == pytest.approx(stats.n_dead / D_SAE)
    assert sae.layer == 2 and sae.d_in == D_IN and sae.d_sae == D_SAE
    assert sae.architecture == ("topk" if arch.startswith("topk") else arch)


def test_decode_needs_input_only_for_per_vector_norms(tmp_path, tensors, x):
    sae = load_sae(write_case(tmp_path, tensors, "standard", True, "layer_norm"))
    with pytest.raises(ValueError, match="needs the encoded vectors"):
        sae.decode(sae.encode(x))
    plain = load_sae(write_case(tmp_path, tensors, "standard", True, "none"))
    np.testing.assert_allclose(plain.decode(plain.encode(x)).numpy(), reference_sae(x, tensors, "standard")[1], rtol=1e-4, atol=1e-4)


def test_save_round_trip_and_norm_factor_argument(tmp_path, tensors, x):
    sae = SparseAutoencoder(**{n: torch.from_numpy(tensors[n]) for n in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")},
                            architecture="jumprelu", apply_b_dec_to_input=False, normalize_activations="expected_average_only_in",
                            norm_scaling_factor=SCALE, hook_name="blocks.4.hook_resid_post")
    back = load_sae(save_sae(sae, tmp_path / "rt"))
    cfg = json.loads((tmp_path / "rt" / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu" and cfg["metadata"]["hook_name"] == "blocks.4.hook_resid_post"
    assert json.loads((tmp_path / "rt" / "activation_scaler.json").read_text())["scaling_factor"] == pytest.approx(SCALE)
    ref = reference_sae(x, tensors, "jumprelu", False, "expected_average_only_in", scale=SCALE)[1]
    np.testing.assert_allclose(back.reconstruct(x).numpy(), ref, rtol=1e-4, atol=1e-4)
    # the factor can come from the caller instead (SAELens keeps hub SAEs' factors in pretrained_saes.yaml)
    (tmp_path / "rt" / "activation_scaler.json").unlink()
    given = load_sae(tmp_path / "rt", norm_scaling_factor=SCALE)
    np.testing.assert_allclose(given.reconstruct(x).numpy(), ref, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ older cfg.json spellings
def test_pre_6_cfg_spellings(tmp_path, tensors, x):
    base = {n: tensors[n] for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
    # SAELens 3.x-5.x: everything top level, hook_point/_str names, bool normalisation, TopK as an activation
    relu = write_saelens_dir(tmp_path / "v3", {**base, "scaling_factor": np.ones(D_SAE, np.float32)},
                             {"d_in": D_IN, "d_sae": D_SAE, "hook_point": "blocks.3.hook_resid_pre", "hook_point_layer": 3,
                              "activation_fn_str": "relu", "normalize_activations": False, "apply_b_dec_to_input": False})
    sae = load_sae(relu)
    assert sae.architecture == "standard" and sae.hook_name == "blocks.3.hook_resid_pre" and sae.layer == 2
    np.testing.assert_allclose(sae.reconstruct(x).numpy(), reference_sae(x, tensors, "standard", False)[1], rtol=1e-4, atol=1e-4)

    topk = write_saelens_dir(tmp_path / "v5", base, {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE,
                                                    "hook_name": "blocks.1.hook_resid_post", "hook_layer": 1,
                                                    "activation_fn": "topk", "activation_fn_kwargs": {"k": K},
                                                    "normalize_activations": True, "sae_lens_version": "5.9.1"},
                             scaling_factor=SCALE)
    sae = load_sae(topk)
    assert sae.architecture == "topk" and sae.k == K and sae.normalize_activations == "expected_average_only_in"
    np.testing.assert_allclose(sae.reconstruct(x).numpy(),
                               reference_sae(x, tensors, "topk", True, "expected_average_only_in", scale=SCALE)[1], rtol=1e-4, atol=1e-4)

    # architecture nested under metadata, Gemma's "jump_relu" spelling, no d_in/d_sae, log_threshold
    jump = write_saelens_dir(tmp_path / "nested", {**base, "log_threshold": np.log(tensors["threshold"])},
                             {"metadata": {"architecture": "jump_relu", "hook_name": "blocks.0.hook_resid_post"},
                              "apply_b_dec_to_input": True})
    sae = load_sae(jump)
    assert sae.architecture == "jumprelu" and sae.layer == 0
    np.testing.assert_allclose(sae.reconstruct(x).numpy(), reference_sae(x, tensors, "jumprelu", True)[1], rtol=1e-4, atol=1e-4)


def test_hook_names():
    assert parse_hook_name("blocks.41.hook_resid_post").layer == 41
    assert parse_hook_name("blocks.41.hook_resid_pre").layer == 40  # the input of block 41 is block 40's output
    assert parse_hook_name("blocks.0.hook_resid_pre").layer is None  # the embeddings
    assert parse_hook_name("model.layers.7.output").hook_name == "blocks.7.hook_resid_post"
    assert parse_hook_name("layers.7").layer == 7
    for other in ("blocks.3.hook_resid_mid", "blocks.3.hook_mlp_out", "blocks.3.attn.hook_z", "hook_embed"):
        assert parse_hook_name(other).layer is None


# ----------------------------------------------------------------------------- Gemma Scope
def test_gemma_scope_npz_and_params_safetensors(tmp_path, tensors, x):
    from safetensors.numpy import save_file

    folder = tmp_path / "gemma-scope-2b-pt-res" / "layer_3" / "width_16k" / "average_l0_10"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **{n: tensors[n] for n in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")})
    ref = reference_sae(x, tensors, "jumprelu", apply_b_dec=False)
    for path in (folder, folder / "params.npz"):
        sae = load_sae(path, d_model=D_IN, layer=3)
        assert (sae.architecture, sae.apply_b_dec_to_input, sae.hook_name) == ("jumprelu", False, "blocks.3.hook_resid_post")
        np.testing.assert_allclose(sae.encode(x).numpy(), ref[0], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(sae.reconstruct(x).numpy(), ref[1], rtol=1e-4, atol=1e-4)

    # Gemma Scope 2 (gemma-3): lower-case tensor names, config.json with the HF hook point
    g2 = tmp_path / "g2" / "resid_post" / "layer_5_width_16k_l0_small"
    g2.mkdir(parents=True)
    save_file({("w_" + n[2:] if n.startswith("W_") else n): tensors[n] for n in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")},
              str(g2 / "params.safetensors"))
    (g2 / "config.json").write_text(json.dumps({"architecture": "jump_relu", "model_name": "gemma-v3-270m-pt",
                                                "hf_hook_point_in": "model.layers.5.output"}))
    sae = load_sae(g2, d_model=D_IN, layer=5)
    assert sae.layer == 5
    np.testing.assert_allclose(sae.reconstruct(x).numpy(), ref[1], rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------- bad input
def _one_line_error(excinfo, *parts):
    msg = str(excinfo.value)
    assert "\n" not in msg and "Fix:" in msg, msg
    for part in parts:
        assert part in msg, (part, msg)


def test_bad_inputs(tmp_path, tensors):
    good = write_case(tmp_path, tensors, "standard", True, "none")  # trained at blocks.2.hook_resid_post

    with pytest.raises(CausalKLError) as e:
        load_sae(good, d_model=D_IN + 1)
    _one_line_error(e, "cfg.json", "d_in", str(D_IN + 1))
    with pytest.raises(CausalKLError) as e:
        load_sae(good, d_model=D_IN, layer=3)
    _one_line_error(e, "cfg.json", "hook_name", "blocks.2.hook_resid_post", "layer 3", "use it at layer 2")
    pre = write_saelens_dir(tmp_path / "pre", {n: tensors[n] for n in ("W_enc", "b_enc", "W_dec", "b_dec")},
                            saelens_cfg_for("standard", True, "none", hook="blocks.3.hook_resid_pre"))
    with pytest.raises(CausalKLError) as e:
        load_sae(pre, layer=3)  # resid_pre of block 3 is layer 2, not 3
    _one_line_error(e, "hook_name", "layer 2")
    load_sae(pre, layer=2)
    mlp = write_saelens_dir(tmp_path / "mlp", {n: tensors[n] for n in ("W_enc", "b_enc", "W_dec", "b_dec")},
                            saelens_cfg_for("standard", True, "none", hook="blocks.2.hook_mlp_out"))
    with pytest.raises(CausalKLError) as e:
        load_sae(mlp, layer=2)
    _one_line_error(e, "hook_name", "not the output of a decoder block")

    def bad_dir(name, tensors_, cfg, **kw):
        return write_saelens_dir(tmp_path / name, tensors_, cfg, **kw)

    base = {n: tensors[n] for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
    cases = [
        (bad_dir("no_wdec", {k: v for k, v in base.items() if k != "W_dec"}, saelens_cfg_for("standard", True, "none")),
         ["sae_weights.safetensors", "W_dec", "missing"]),
        (bad_dir("short_benc", {**base, "b_enc": base["b_enc"][:-1]}, saelens_cfg_for("standard", True, "none")),
         ["sae_weights.safetensors", "b_enc", "shape"]),
        (bad_dir("transposed", {**base, "W_dec": base["W_dec"].T.copy()}, saelens_cfg_for("standard", True, "none")),
         ["sae_weights.safetensors", "W_dec", "shape"]),
        (bad_dir("cfg_width", base, {**saelens_cfg_for("standard", True, "none"), "d_in": D_IN + 2}),
         ["sae_weights.safetensors", "W_enc", "d_in"]),
        (bad_dir("no_threshold", base, saelens_cfg_for("jumprelu", True, "none")), ["threshold", "missing"]),
        (bad_dir("matching_pursuit", base, {**saelens_cfg_for("standard", True, "none"), "architecture": "matching_pursuit"}),
         ["cfg.json", "architecture", "matching_pursuit", "not supported"]),
        (bad_dir("gated", base, {**saelens_cfg_for("standard", True, "none"), "architecture": "gated"}),
         ["sae_weights.safetensors", "b_gate", "missing"]),
        (bad_dir("unknown", base, {**saelens_cfg_for("standard", True, "none"), "architecture": "banana"}),
         ["cfg.json", "architecture", "banana", "unknown"]),
        (bad_dir("no_k", base, {k: v for k, v in saelens_cfg_for("topk", True, "none").items() if k != "k"}), ["k", "TopK"]),
        (bad_dir("tanh", base, {"d_in": D_IN, "d_sae": D_SAE, "activation_fn_str": "tanh-relu"}), ["activation_fn", "tanh-relu"]),
        (bad_dir("no_scaler", base, saelens_cfg_for("standard", True, "expected_average_only_in")),
         ["cfg.json", "normalize_activations", "activation_scaler.json"]),
        (bad_dir("whiten", base, saelens_cfg_for("standard", True, "covariance_whitening")), ["normalize_activations", "covariance_whitening"]),
        (bad_dir("per_head", base, {**saelens_cfg_for("standard", True, "none"), "hook_head_index": 2}), ["hook_head_index"]),
        (bad_dir("scaled", {**base, "scaling_factor": np.full(D_SAE, 2.0, np.float32)}, saelens_cfg_for("standard", True, "none")),
         ["scaling_factor"]),
        (bad_dir("hook_layer", base, {"d_in": D_IN, "hook_name": "blocks.2.hook_resid_post", "hook_layer": 5}), ["hook_layer"]),
    ]
    for path, parts in cases:
        with pytest.raises(CausalKLError) as e:
            load_sae(path)
        _one_line_error(e, *parts)

    (tmp_path / "badjson").mkdir()
    (tmp_path / "badjson" / "cfg.json").write_text("{not json")
    (tmp_path / "badjson" / "sae_weights.safetensors").write_bytes((good / "sae_weights.safetensors").read_bytes())
    (tmp_path / "empty").mkdir()
    (tmp_path / "cfg_only").mkdir()
    (tmp_path / "cfg_only" / "cfg.json").write_text((good / "cfg.json").read_text())
    npz_dir = tmp_path / "npz"
    npz_dir.mkdir()
    np.savez(npz_dir / "params.npz", **{n: tensors[n] for n in ("W_enc", "W_dec", "b_enc", "b_dec")})
    for path, parts in [
        (tmp_path / "nowhere", ["nowhere", "sae path", "does not exist"]),
        (tmp_path / "empty", ["empty", "cfg.json", "no SAE found"]),
        (tmp_path / "cfg_only", ["sae_weights.safetensors", "not found"]),
        (tmp_path / "badjson", ["cfg.json", "not valid JSON"]),
        (npz_dir, ["params.npz", "threshold", "missing"]),
    ]:
        with pytest.raises(CausalKLError) as e:
            load_sae(path)
        _one_line_error(e, *parts)


# -------------------------------------------------------------------------- SAELens itself
def saelens_encode_decode(path, x: np.ndarray, norm: str) -> tuple[torch.Tensor, torch.Tensor]:
    """SAELens itself on the SAE directory ``path``: its latents and reconstruction of ``x`` (``SAE.load_from_disk``;
    for expected_average_only_in, SAELens scales outside the SAE with the factor its trainer saved, as here)."""
    sae_lens = pytest.importorskip("sae_lens")
    from sae_lens.training.activation_scaler import ActivationScaler

    theirs = sae_lens.SAE.load_from_disk(str(path))
    scaler = ActivationScaler(scaling_factor=SCALE if norm == "expected_average_only_in" else None)
    with torch.no_grad():
        acts = theirs.encode(scaler.scale(torch.from_numpy(x)))
        return acts, scaler.unscale(theirs.decode(acts))


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("apply_b_dec", [True, False])
@pytest.mark.parametrize("arch", ARCHS)
def test_same_as_saelens_load_from_disk(tmp_path, tensors, x, arch, apply_b_dec, norm):
    path = write_case(tmp_path, tensors, arch, apply_b_dec, norm)
    acts_theirs, out_theirs = saelens_encode_decode(path, x, norm)
    ours = load_sae(path)
    torch.testing.assert_close(ours.encode(x), acts_theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.reconstruct(x), out_theirs, rtol=1e-5, atol=1e-5)


def test_saelens_reads_our_old_spellings_and_demo_sae_the_same(tmp_path, tensors, x):
    sae_lens = pytest.importorskip("sae_lens")
    base = {n: tensors[n] for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
    old = write_saelens_dir(tmp_path / "v5", base, {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32",
                                                   "hook_point": "blocks.1.hook_resid_post", "activation_fn_str": "topk",
                                                   "activation_fn_kwargs": {"k": K}, "apply_b_dec_to_input": False,
                                                   "normalize_activations": "none"})
    demo = tmp_path / "demo"
    write_demo_sae(np.random.default_rng(0).normal(3, 1, (300, D_IN)).astype(np.float32), demo, layer=1,
                   config=SAETrainConfig(steps=30))
    for path in (old, demo):
        theirs = sae_lens.SAE.load_from_disk(str(path))
        assert theirs.cfg.architecture() == "topk" and theirs.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
        with torch.no_grad():
            torch.testing.assert_close(load_sae(path).reconstruct(x), theirs.decode(theirs.encode(torch.from_numpy(x))),
                                       rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- demo SAE
def _sparse_data(n, d=32, n_atoms=48, active=4, seed=0):
    """Residual-like vectors: a mean offset plus a few of ``n_atoms`` fixed directions, plus noise."""
    rng = np.random.default_rng(seed)
    atoms = rng.normal(size=(n_atoms, d))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    coef = np.zeros((n, n_atoms))
    for i in range(n):
        coef[i, rng.choice(n_atoms, active, replace=False)] = rng.uniform(1, 4, active)
    return (coef @ atoms * 5 + 10 * rng.normal(size=d) / np.sqrt(d) + 0.1 * rng.normal(size=(n, d))).astype(np.float32)


def test_demo_sae_is_deterministic_and_saved_in_saelens_format(tmp_path):
    data = _sparse_data(1500)
    golds, held_out = data[:1200], data[1200:]
    cfg = SAETrainConfig(k=8, steps=600)
    report = write_demo_sae(golds, tmp_path / "a", layer=3, config=cfg)
    write_demo_sae(golds, tmp_path / "b", layer=3, config=cfg)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        from safetensors.numpy import load_file

        np.testing.assert_array_equal(load_file(str(tmp_path / "a" / "sae_weights.safetensors"))[name],
                                      load_file(str(tmp_path / "b" / "sae_weights.safetensors"))[name])
    cfg_json = json.loads((tmp_path / "a" / "cfg.json").read_text())
    assert cfg_json["architecture"] == "topk" and cfg_json["k"] == 8
    assert (cfg_json["d_in"], cfg_json["d_sae"]) == (32, 64)
    assert cfg_json["metadata"]["hook_name"] == "blocks.3.hook_resid_post"
    assert cfg_json["normalize_activations"] == "none"  # the training scale is folded into the weights

    sae = load_sae(tmp_path / "a", d_model=32, layer=3)
    recon = sae.reconstruct(held_out).numpy()
    # FVE as the design defines it (direction-MSE of sqrt(d)-scaled rows over Var), written out here
    d = held_out.shape[1]
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    g, r = np.sqrt(d) * unit(held_out.astype(np.float64)), np.sqrt(d) * unit(recon.astype(np.float64))
    fve = 1 - ((r - g) ** 2).mean(axis=1).mean() / (g.var(axis=0).sum() / d)
    stats = sae.sparsity(held_out)
    assert stats.l0 == pytest.approx(8.0)  # TopK: exactly k active unless a top-k value is <= 0
    assert fve > 0.8, fve
    assert explained_variance(held_out, recon) > 0.8
    assert report.l0 == pytest.approx(8.0)
    # Measured on the real demo (2000 training golds of width 160, layer 3 of the demo Gemma-3,
    # default SAETrainConfig: d_sae 320, k 16, 600 steps; 2.4 s on one core of the shared 2-core box):
    # on the 500 held-out eval golds, explained variance 0.943, FVE (design) 0.931, L0 16.0, dead 0.9%.


def test_demo_sae_rejects_bad_golds():
    with pytest.raises(ValueError):
        train_topk_sae(np.zeros((1, 8), np.float32), layer=0)


def test_demo_sublayer_saes_saved_as_saelens_reads_them(tmp_path):
    """The demo's SAEs inside a block: a TopK SAE at attn.hook_z is saved with SAELens' hook name and reshape (read
    back by SAELens itself); a skip transcoder mlp_in -> mlp_out, saved as SAELens' SkipTranscoder, is read back by
    SAELens and its forward equals ours; its latents beat the best linear map from input to target (least squares,
    numpy), which the skip term alone could at most reach, and it is sparse."""
    import sae_lens

    from causal_kl.demo.sae import write_demo_transcoder

    data = _sparse_data(1500)
    write_demo_sae(data[:1200], tmp_path / "z", layer=3, config=SAETrainConfig(k=8, steps=100), hook="attn_z")
    cfg_json = json.loads((tmp_path / "z" / "cfg.json").read_text())
    assert cfg_json["metadata"]["hook_name"] == "blocks.3.attn.hook_z" and cfg_json["reshape_activations"] == "hook_z"
    assert sae_lens.SAE.load_from_disk(str(tmp_path / "z")).cfg.metadata.hook_name == "blocks.3.attn.hook_z"

    rng = np.random.default_rng(1)
    x = data.astype(np.float64)
    W = rng.normal(size=(32, 48)) / 4
    y = (np.maximum(x @ W - 2.0, 0) @ rng.normal(size=(48, 32)) / 4 + 0.5 * x).astype(np.float32)
    report = write_demo_transcoder(data[:1200], y[:1200], tmp_path / "tc", layer=3,
                                   config=SAETrainConfig(steps=600, expansion=4), l1_coefficient=0.3)
    cfg_json = json.loads((tmp_path / "tc" / "cfg.json").read_text())
    assert cfg_json["architecture"] == "skip_transcoder"
    assert (cfg_json["metadata"]["hook_name"], cfg_json["metadata"]["hook_name_out"]) == ("blocks.3.hook_mlp_in",
                                                                                        "blocks.3.hook_mlp_out")
    theirs = sae_lens.SkipTranscoder.load_from_disk(str(tmp_path / "tc"))
    ours = load_sae(tmp_path / "tc")
    held_in, held_out = data[1200:], y[1200:]
    with torch.no_grad():
        want = theirs(torch.from_numpy(held_in)).numpy()
    np.testing.assert_allclose(ours.reconstruct(held_in).numpy(), want, atol=1e-4, rtol=1e-4)
    xa = np.c_[data[:1200], np.ones(1200)]
    coef = np.linalg.lstsq(xa, y[:1200], rcond=None)[0]
    linear = np.c_[held_in, np.ones(len(held_in))] @ coef
    assert explained_variance(held_out, want) > explained_variance(held_out, linear) + 0.02
    assert 0 < report.l0 < ours.d_sae / 2
