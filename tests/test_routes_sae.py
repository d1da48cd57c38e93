"""The `sae` route (causal_kl.routes.sae) against the format's definition and sae_lens itself.

The reference SAE (``reference_sae``: standard/ReLU, JumpReLU with its threshold, TopK, with and
without ``apply_b_dec_to_input``, every normalisation), the random tensors and the SAELens
``cfg.json`` writer are ``tests/test_sae.py``'s. Every error is checked twice: at parse time
(``check_sae_config``, which reads only JSON and tensor headers) and at load time
(``reconstruct``), and the two must name the same file and field.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from causal_kl.errors import CausalKLError
from causal_kl.routes.sae import (
    check_sae_config,
    npz_shapes,
    reconstruct,
    safetensors_shapes,
    sae_path,
)
from causal_kl.sae import write_saelens_dir
from test_sae import (  # noqa: F401 (tensors and x are fixtures)
    ARCHS,
    D_IN,
    D_SAE,
    K,
    N,
    NORMS,
    SCALE,
    _one_line_error,
    random_tensors,
    reference_sae,
    saelens_cfg_for,
    saelens_encode_decode,
    tensors,
    write_case,
    x,
)

LAYER = 2  # write_case's SAEs are trained at blocks.2.hook_resid_post
BASE = ("W_enc", "b_enc", "W_dec", "b_dec")
GEMMA = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")


@pytest.fixture(scope="module")
def golds(x):
    """test_sae's residual-like vectors, as the golds the route reconstructs."""
    return x


def _entry(path, **kw):
    return {"kind": "sae", "path": str(path), "format": "auto", "layer": None, "check_hook": True, "batch_size": 7, **kw}


def _direct_stats(x, acts, recon):
    """L0, dead latents and SAELens' explained variance, counted directly."""
    active = acts != 0
    x, recon = np.asarray(x, np.float64), np.asarray(recon, np.float64)
    total = (x ** 2).sum(axis=1).mean() - (x.mean(axis=0) ** 2).sum()
    return {"l0": active.sum(axis=1).mean(), "n_dead": int((~active.any(axis=0)).sum()),
            "explained_variance": 1 - ((x - recon) ** 2).sum(axis=1).mean() / total}


# ------------------------------------------------------------------ against the definition
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("apply_b_dec", [True, False])
@pytest.mark.parametrize("arch", ARCHS)
def test_reconstruction_and_sparsity_match_the_definition(tmp_path, tensors, golds, arch, apply_b_dec, norm):
    path = write_case(tmp_path, tensors, arch, apply_b_dec, norm)
    entry = _entry(path)
    check_sae_config(entry, "s", LAYER, D_IN, "config.yaml")
    recon, stats = reconstruct(entry, LAYER, golds, "cpu", "config routes.s")
    base = "topk" if arch.startswith("topk") else arch
    acts_ref, out_ref = reference_sae(golds, tensors, base, apply_b_dec, norm, scale=SCALE, rescale=arch == "topk_rescaled")
    assert recon.dtype == np.float32 and recon.shape == golds.shape
    np.testing.assert_allclose(recon, out_ref, rtol=1e-4, atol=1e-4)
    direct = _direct_stats(golds, acts_ref, out_ref)
    assert stats["l0"] == pytest.approx(direct["l0"])
    assert stats["n_dead"] == direct["n_dead"] >= 2  # random_tensors kills two latents
    assert stats["dead_share"] == pytest.approx(direct["n_dead"] / D_SAE)
    assert stats["explained_variance"] == pytest.approx(direct["explained_variance"], abs=1e-5)
    assert (stats["n"], stats["d_sae"], stats["architecture"], stats["hook_name"]) == (N, D_SAE, base, "blocks.2.hook_resid_post")
    if base == "topk":
        assert stats["l0"] <= K
    json.dumps(stats)  # provenance-ready
    # batching changes nothing but the batch size
    whole, _ = reconstruct({**entry, "batch_size": 4096}, LAYER, golds)
    np.testing.assert_allclose(whole, recon, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm", ["none", "layer_norm", "expected_average_only_in"])
@pytest.mark.parametrize("apply_b_dec", [True, False])
@pytest.mark.parametrize("arch", ARCHS)
def test_same_as_saelens_load_from_disk(tmp_path, tensors, golds, arch, apply_b_dec, norm):
    path = write_case(tmp_path, tensors, arch, apply_b_dec, norm)
    acts, out = saelens_encode_decode(path, golds, norm)
    out = out.numpy()
    recon, stats = reconstruct(_entry(path), LAYER, golds)
    np.testing.assert_allclose(recon, out, rtol=1e-5, atol=1e-5)
    direct = _direct_stats(golds, acts.numpy(), out)
    assert stats["l0"] == pytest.approx(direct["l0"]) and stats["n_dead"] == direct["n_dead"]


# ----------------------------------------------------------------------- suites, Gemma Scope
def test_suite_path_one_sae_per_layer(tmp_path, golds):
    from causal_kl.checks import check_routes

    per_layer = {1: random_tensors(seed=5), 3: random_tensors(seed=6)}
    for layer, t in per_layer.items():
        write_saelens_dir(tmp_path / "suite" / f"L{layer}", {n: t[n] for n in BASE},
                          saelens_cfg_for("standard", True, "none", hook=f"blocks.{layer}.hook_resid_post"))
    entry = _entry(tmp_path / "suite" / "L{layer}", layer=[1, 3])
    assert sae_path(entry, 3) == str(tmp_path / "suite" / "L3")
    for layer, t in per_layer.items():
        check_sae_config(entry, "s", layer, D_IN, "config.yaml")
        recon, stats = reconstruct(entry, layer, golds)
        assert stats["hook_name"] == f"blocks.{layer}.hook_resid_post"
        np.testing.assert_allclose(recon, reference_sae(golds, t, "standard")[1], rtol=1e-4, atol=1e-4)
    # the parse-time check as the workflow runs it, per layer of the route
    check_routes({"s": entry}, [0, 6], [1, 3], "config.yaml", D_IN)
    with pytest.raises(CausalKLError) as e:
        check_routes({"s": entry}, [0, 6], [1, 3], "config.yaml", D_IN + 1)
    _one_line_error(e, "L1", "cfg.json", "d_in", str(D_IN + 1))
    with pytest.raises(CausalKLError) as e:
        check_routes({"s": {**entry, "layer": None}}, [0, 6], [1, 2, 3], "config.yaml", D_IN)
    _one_line_error(e, "config.yaml", "routes.s.path", "L2", "does not exist")


def test_gemma_scope_npz_and_params_safetensors(tmp_path, tensors, golds):
    from safetensors import safe_open
    from safetensors.numpy import save_file

    ref = reference_sae(golds, tensors, "jumprelu", apply_b_dec=False)
    folder = tmp_path / "gemma-scope-2b-pt-res" / "layer_3" / "width_16k" / "average_l0_10"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **{n: tensors[n] for n in GEMMA})
    assert npz_shapes(folder / "params.npz") == {n: tensors[n].shape for n in GEMMA}
    g2 = tmp_path / "g2" / "resid_post" / "layer_5_width_16k_l0_small"
    g2.mkdir(parents=True)
    save_file({("w_" + n[2:] if n.startswith("W_") else n): tensors[n] for n in GEMMA}, str(g2 / "params.safetensors"))
    (g2 / "config.json").write_text(json.dumps({"architecture": "jump_relu", "hf_hook_point_in": "model.layers.5.output"}))
    with safe_open(str(g2 / "params.safetensors"), "np") as f:
        assert safetensors_shapes(g2 / "params.safetensors") == {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}

    for path, layer in ((folder, 3), (folder / "params.npz", 3), (g2, 5), (g2 / "params.safetensors", 5)):
        for fmt in ("auto", "gemma_scope"):
            entry = _entry(path, format=fmt)
            check_sae_config(entry, "g", layer, D_IN, "config.yaml")
            recon, stats = reconstruct(entry, layer, golds)
            np.testing.assert_allclose(recon, ref[1], rtol=1e-4, atol=1e-4)
            direct = _direct_stats(golds, ref[0], ref[1])
            assert stats["l0"] == pytest.approx(direct["l0"]) and stats["n_dead"] == direct["n_dead"]
            assert stats["hook_name"] == f"blocks.{layer}.hook_resid_post"
        # the folder layout / config.json names the layer: another one is refused unless check_hook is false
        for call in (lambda e: check_sae_config(e, "g", layer + 1, D_IN, "config.yaml"),
                     lambda e: reconstruct(e, layer + 1, golds)):
            with pytest.raises(CausalKLError) as e:
                call(_entry(path))
            _one_line_error(e, "hook_name", f"use it at layer {layer}", "check_hook")
            call(_entry(path, check_hook=False))
    # a format the files do not have
    for call in (lambda e: check_sae_config(e, "g", 3, D_IN, "config.yaml"), lambda e: reconstruct(e, 3, golds)):
        with pytest.raises(CausalKLError) as e:
            call(_entry(folder, format="saelens"))
        _one_line_error(e, "format", "saelens", "gemma_scope")


# -------------------------------------------------------------------------------- bad input
def _cases(tmp, t):
    """(name, path, parts every error message holds, layer, d_model) of each bad SAE route."""
    base = {n: t[n] for n in BASE}
    good = write_case(tmp, t, "standard", True, "none")

    def saelens(name, tensors_, cfg, **kw):
        return write_saelens_dir(tmp / name, tensors_, cfg, **kw)

    plain = saelens_cfg_for("standard", True, "none")
    cases = [
        ("d_in", good, ["cfg.json", "d_in", f"width is {D_IN + 1}"], LAYER, D_IN + 1),
        ("other_layer", good, ["cfg.json", "hook_name", "blocks.2.hook_resid_post", "layer 3", "use it at layer 2", "check_hook"], 3, D_IN),
        ("resid_pre", saelens("pre", base, saelens_cfg_for("standard", True, "none", hook="blocks.3.hook_resid_pre")),
         ["hook_name", "layer 2", "check_hook"], 3, D_IN),
        ("mlp_out", saelens("mlp", base, saelens_cfg_for("standard", True, "none", hook="blocks.2.hook_mlp_out")),
         ["hook_name", "not the output of a decoder block"], LAYER, D_IN),
        ("missing_tensor", saelens("no_wdec", {k: v for k, v in base.items() if k != "W_dec"}, plain),
         ["sae_weights.safetensors", "W_dec", "missing"], LAYER, D_IN),
        ("short_b_enc", saelens("short_benc", {**base, "b_enc": base["b_enc"][:-1]}, plain),
         ["sae_weights.safetensors", "b_enc", "shape"], LAYER, D_IN),
        ("transposed_W_dec", saelens("transposed", {**base, "W_dec": base["W_dec"].T.copy()}, plain),
         ["sae_weights.safetensors", "W_dec", "shape"], LAYER, D_IN),
        ("vector_W_enc", saelens("flat", {**base, "W_enc": base["W_enc"].reshape(-1)}, plain),
         ["sae_weights.safetensors", "W_enc", "shape"], LAYER, D_IN),
        ("cfg_width", saelens("cfg_width", base, {**plain, "d_in": D_IN + 2}), ["sae_weights.safetensors", "W_enc", "d_in"], LAYER, None),
        ("no_threshold", saelens("no_threshold", base, saelens_cfg_for("jumprelu", True, "none")), ["threshold", "missing"], LAYER, D_IN),
        ("unknown_arch", saelens("banana", base, {**plain, "architecture": "banana"}),
         ["cfg.json", "architecture", "banana", "unknown"], LAYER, D_IN),
        ("unsupported_arch", saelens("matching_pursuit", base, {**plain, "architecture": "matching_pursuit"}),
         ["cfg.json", "architecture", "matching_pursuit", "not supported"], LAYER, D_IN),
        ("no_k", saelens("no_k", base, {k: v for k, v in saelens_cfg_for("topk", True, "none").items() if k != "k"}),
         ["sae_weights.safetensors", "k", "TopK"], LAYER, D_IN),
        ("tanh", saelens("tanh", base, {"d_in": D_IN, "d_sae": D_SAE, "activation_fn_str": "tanh-relu"}),
         ["activation_fn", "tanh-relu"], LAYER, D_IN),
        ("no_scaler", saelens("no_scaler", base, saelens_cfg_for("standard", True, "expected_average_only_in")),
         ["cfg.json", "normalize_activations", "activation_scaler.json"], LAYER, D_IN),
        ("whitening", saelens("whiten", base, saelens_cfg_for("standard", True, "covariance_whitening")),
         ["normalize_activations", "covariance_whitening"], LAYER, D_IN),
        ("per_head", saelens("per_head", base, {**plain, "hook_head_index": 2}), ["hook_head_index"], LAYER, D_IN),
        ("hook_layer", saelens("hook_layer", base, {"d_in": D_IN, "hook_name": "blocks.2.hook_resid_post", "hook_layer": 5}),
         ["hook_layer"], LAYER, D_IN),
    ]
    (tmp / "empty").mkdir()
    (tmp / "cfg_only").mkdir()
    (tmp / "cfg_only" / "cfg.json").write_text((good / "cfg.json").read_text())
    (tmp / "badjson").mkdir()
    (tmp / "badjson" / "cfg.json").write_text("{not json")
    (tmp / "badjson" / "sae_weights.safetensors").write_bytes((good / "sae_weights.safetensors").read_bytes())
    (tmp / "garbage").mkdir()
    (tmp / "garbage" / "cfg.json").write_text((good / "cfg.json").read_text())
    (tmp / "garbage" / "sae_weights.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{nope")
    (tmp / "npz").mkdir()
    np.savez(tmp / "npz" / "params.npz", **{n: t[n] for n in GEMMA if n != "threshold"})
    (tmp / "weird.bin").write_bytes(b"x")
    # truncated (header intact) and overlong weights: safetensors refuses both, so they are refused at parse time
    weights = (good / "sae_weights.safetensors").read_bytes()
    for name, data in (("truncated", weights[:-40]), ("overlong", weights + b"\0" * 8)):
        (tmp / name).mkdir()
        (tmp / name / "cfg.json").write_text((good / "cfg.json").read_text())
        (tmp / name / "sae_weights.safetensors").write_bytes(data)
    from safetensors.numpy import save_file

    g2 = tmp / "g2_truncated" / "resid_post" / "layer_2_width_16k_l0_small"
    g2.mkdir(parents=True)
    save_file({n: t[n] for n in GEMMA}, str(g2 / "params.safetensors"))
    (g2 / "params.safetensors").write_bytes((g2 / "params.safetensors").read_bytes()[:-1000])
    (tmp / "npz_truncated").mkdir()
    np.savez(tmp / "npz_truncated" / "params.npz", **{n: t[n] for n in GEMMA})
    (tmp / "npz_truncated" / "params.npz").write_bytes((tmp / "npz_truncated" / "params.npz").read_bytes()[:-300])
    cases += [
        ("truncated", tmp / "truncated", ["truncated/sae_weights.safetensors", "truncated", "40 missing", "download the file again"],
         LAYER, D_IN),
        ("overlong", tmp / "overlong", ["overlong/sae_weights.safetensors", "8 bytes past the end", "download the file again"],
         LAYER, D_IN),
        ("gemma_scope_2_truncated", g2, ["params.safetensors", "truncated", "1,000 missing"], LAYER, D_IN),
        ("npz_truncated", tmp / "npz_truncated", ["params.npz", "not a readable npz file"], LAYER, D_IN),
    ]
    cases += [
        ("empty_dir", tmp / "empty", ["empty", "cfg.json", "no SAE found"], LAYER, D_IN),
        ("no_weights", tmp / "cfg_only", ["sae_weights.safetensors", "not found"], LAYER, D_IN),
        ("bad_json", tmp / "badjson", ["cfg.json", "not valid JSON"], LAYER, D_IN),
        ("bad_safetensors", tmp / "garbage", ["sae_weights.safetensors", "not a readable safetensors file"], LAYER, D_IN),
        ("npz_missing_threshold", tmp / "npz", ["params.npz", "threshold", "missing"], LAYER, D_IN),
        ("not_an_sae_file", tmp / "weird.bin", ["weird.bin", "is not an SAE file"], LAYER, D_IN),
    ]
    return cases


CASE_NAMES = [  # the order of _cases
    "d_in", "other_layer", "resid_pre", "mlp_out", "missing_tensor", "short_b_enc", "transposed_W_dec", "vector_W_enc",
    "cfg_width", "no_threshold", "unknown_arch", "unsupported_arch", "no_k", "tanh", "no_scaler", "whitening", "per_head",
    "hook_layer", "truncated", "overlong", "gemma_scope_2_truncated", "npz_truncated", "empty_dir", "no_weights", "bad_json",
    "bad_safetensors", "npz_missing_threshold", "not_an_sae_file"]


@pytest.fixture(scope="module")
def bad_cases(tmp_path_factory):
    cases = _cases(tmp_path_factory.mktemp("bad"), random_tensors())
    assert [c[0] for c in cases] == CASE_NAMES
    return {c[0]: c[1:] for c in cases}


@pytest.mark.parametrize("case", CASE_NAMES)
def test_errors_at_parse_time_and_at_load_time_agree(bad_cases, case):
    path, parts, layer, d_model = bad_cases[case]
    entry = _entry(path)
    with pytest.raises(CausalKLError) as parsed:
        check_sae_config(entry, "s", layer, d_model, "config.yaml")
    _one_line_error(parsed, *parts)
    golds = np.random.default_rng(0).normal(size=(5, d_model or D_IN)).astype(np.float32)
    with pytest.raises(CausalKLError) as loaded:
        reconstruct(entry, layer, golds, "cpu", "config routes.s")
    _one_line_error(loaded, *parts)
    assert (parsed.value.file, parsed.value.field) == (loaded.value.file, loaded.value.field)
    # the same words (a reader's own message in parentheses may differ: safetensors vs the header parsed here)
    assert parsed.value.problem.split(" (")[0] == loaded.value.problem.split(" (")[0]


@pytest.mark.parametrize("case", ["other_layer", "resid_pre"])
def test_check_hook_false_splices_anyway(bad_cases, tensors, golds, case):
    """check_hook: false moves an SAE to another layer (an MLP-out SAE is never moved to the residual stream:
    tests/test_sae_hooks.py)."""
    path, _, layer, _ = bad_cases[case]
    entry = _entry(path, check_hook=False)
    check_sae_config(entry, "s", layer, D_IN, "config.yaml")
    recon, _ = reconstruct(entry, layer, golds)
    np.testing.assert_allclose(recon, reference_sae(golds, tensors, "standard")[1], rtol=1e-4, atol=1e-4)


def test_missing_path(tmp_path, golds):
    entry = _entry(tmp_path / "nowhere" / "L{layer}")
    with pytest.raises(CausalKLError) as e:
        check_sae_config(entry, "s", LAYER, D_IN, "config.yaml")
    _one_line_error(e, "config.yaml", "routes.s.path", "nowhere/L2", "does not exist")
    with pytest.raises(CausalKLError) as e:
        reconstruct(entry, LAYER, golds, "cpu", "config routes.s")
    _one_line_error(e, "config routes.s", "path", "nowhere/L2", "does not exist")


def test_parse_time_check_imports_neither_torch_nor_safetensors(bad_cases, tmp_path):
    from workflow_helpers import ROOT, blocked_imports_env

    good = write_case(tmp_path, random_tensors(), "jumprelu", False, "none")
    np.savez(tmp_path / "params.npz", **{n: random_tensors()[n] for n in GEMMA})
    bad = bad_cases["missing_tensor"][0]
    script = f"""
import sys
from causal_kl.errors import CausalKLError
from causal_kl.routes.sae import check_sae_config
from causal_kl.checks import check_routes
entry = {{"kind": "sae", "path": {str(good)!r}, "check_hook": True}}
check_sae_config(entry, "s", 2, {D_IN}, "config.yaml")
check_routes({{"s": entry}}, [0, 6], [2], "config.yaml", {D_IN})
check_sae_config({{"kind": "sae", "path": {str(tmp_path / "params.npz")!r}}}, "g", 2, {D_IN}, "config.yaml")
for path, layer, d in (({str(good)!r}, 3, {D_IN}), ({str(good)!r}, 2, {D_IN + 1}), ({str(bad)!r}, 2, {D_IN})):
    try:
        check_sae_config({{"kind": "sae", "path": path}}, "s", layer, d, "config.yaml")
    except CausalKLError as e:
        print("refused:", e.field)
    else:
        raise SystemExit("not refused")
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "safetensors"))
print("loaded:", loaded)
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env=blocked_imports_env(("torch", "transformers", "safetensors")))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:4] == ["refused: hook_name", "refused: d_in", "refused: W_dec", "loaded: []"], out.stdout
