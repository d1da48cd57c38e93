"""Llama Scope (+ R1 distill), mwhanna's Qwen3 transcoders, Gemma Scope's gemma-2 transcoders and Connor & Rob's
GPT-2 hook_z SAEs are read as SAELens' own loaders read them; cross-layer transcoders are refused in one line.

For each format the files are laid out in a temporary Hugging Face cache (``fixtures.lay_out_hub_cache``) under the
repo and path an entry of the installed sae-lens' ``pretrained_saes.yaml`` names, with small random weights of the
layout SAELens' loader reads (widths shrunk to the tiny models': hidden 64). SAELens loads them itself, offline
(``SAE.from_pretrained_with_cfg_and_sparsity``, which folds the catalogue's ``norm_scaling_factor`` in; for the
gemma-2 transcoders its loader with the widths overridden, as its config hard-codes gemma-2-2b's 2304 x 16k). Ours
reads them by ``release`` + ``sae_id``, by ``repo`` + ``folder`` and by ``path``: the hooks it reads and writes
(``route_points`` on a tiny model of the release's family), architecture, normalisation and widths are SAELens', and
the route's reconstruction is SAELens' module's forward to 1e-6.
"""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from causal_kl.errors import CausalKLError
from causal_kl.hooks import Point, tl_hook
from causal_kl.routes.sae import read_sae_files, reconstruct, route_points
from causal_kl.sae import load_sae
from causal_kl.sae_hub import resolve_named, saelens_releases
from causal_kl.sae_scope import catalogue_sites

from fixtures import (gemma_scope_npz, hook_z_files, lay_out_hub_cache, llama_scope_files, llama_scope_r1_files,
                      mwhanna_transcoder_files)

sae_lens = pytest.importorskip("sae_lens")

D = 64  # every tiny model's hidden size (GPT-2: 4 heads x 16 = 64 at attn.hook_z too)
CASES = {  # case -> (release, sae_id, family of the tiny model, layer, (hook in, hook out))
    "llama_scope_res": ("llama_scope_lxr_8x", "l3r_8x", "llama", 3, ("resid_post", "resid_post")),
    "llama_scope_att": ("llama_scope_lxa_32x", "l2a_32x", "llama", 2, ("attn_out", "attn_out")),
    "llama_scope_mlp": ("llama_scope_lxm_8x", "l1m_8x", "llama", 1, ("mlp_out", "mlp_out")),
    "llama_scope_r1": ("llama_scope_r1_distill", "l1r_800m_slimpajama", "llama", 1, ("resid_post", "resid_post")),
    "mwhanna": ("mwhanna-qwen3-0.6b-transcoders-lowl0", "layer_2", "qwen3", 2, ("mlp_in", "mlp_out")),
    "mwhanna_14b": ("mwhanna-qwen3-14b-transcoders", "layer_1", "qwen3", 1, ("mlp_in", "mlp_out")),
    "gemma_2_transcoder": ("gemma-scope-2b-pt-transcoders", "layer_3/width_16k/average_l0_54", "gemma2", 3,
                           ("mlp_in", "mlp_out")),
    "hook_z": ("gpt2-small-hook-z-kk", "blocks.2.hook_z", "gpt2", 2, ("attn_z", "attn_z")),
    "hook_z_legacy": ("gpt2-small-hook-z-kk", "blocks.1.hook_z", "gpt2", 1, ("attn_z", "attn_z")),  # torch < 1.6's .pt
}


def _entry(release: str, sae_id: str) -> tuple[dict, dict]:
    info = saelens_releases()[release]
    return info, next(s for s in info["saes"] if str(s["id"]) == sae_id)


def _safetensors(t: dict) -> bytes:
    from safetensors.numpy import save

    return save({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in t.items()})


def _files(case: str, rng) -> dict[str, bytes]:
    """The repo's files of one case, as the hub holds them (what SAELens' loader of the format downloads)."""
    release, sae_id, _, layer, _ = CASES[case]
    info, sae = _entry(release, sae_id)
    path = str(sae["path"])
    d_sae = 2 * D
    if case.startswith("llama_scope") and case != "llama_scope_r1":
        kind = {"res": "hook_resid_post", "att": "hook_attn_out", "mlp": "hook_mlp_out"}[case.rsplit("_", 1)[1]]
        return llama_scope_files(rng, path, f"blocks.{layer}.{kind}", D, d_sae, float(sae["norm_scaling_factor"]))
    if case == "llama_scope_r1":
        return llama_scope_r1_files(rng, path, f"blocks.{layer}.hook_resid_post", D, d_sae)
    if case == "mwhanna":  # the misspelt wandb config and a config.yaml, as in some repos
        return mwhanna_transcoder_files(rng, path, D, d_sae, wandb_name="wanb-config.yaml", model_name="Qwen/Qwen3-0.6B")
    if case == "mwhanna_14b":  # the 14b repos: no config.yaml
        return mwhanna_transcoder_files(rng, path, D, d_sae)
    if case == "gemma_2_transcoder":
        return {f"{path}/params.npz": gemma_scope_npz(rng, D, d_sae)}
    assert case.startswith("hook_z")
    return hook_z_files(rng, path, layer, D, d_sae, legacy=case == "hook_z_legacy")


@pytest.fixture
def hub(offline_hub):
    return offline_hub


def _lay_out(hub, case: str, seed: int = 0):
    release = CASES[case][0]
    repo = saelens_releases()[release]["repo_id"]
    commit = lay_out_hub_cache(hub, repo, _files(case, np.random.default_rng(seed)))
    return repo, hub / ("models--" + repo.replace("/", "--")) / "snapshots" / commit


def _saelens(case: str):
    """SAELens' own reading: (module, cfg dict after loading), its forward the reference."""
    release, sae_id, *_ = CASES[case]
    if case == "gemma_2_transcoder":  # its config hard-codes gemma-2-2b's widths: override them with the files'
        from sae_lens.loading.pretrained_sae_loaders import (gemma_2_transcoder_huggingface_loader,
                                                             handle_config_defaulting)

        info, sae = _entry(release, sae_id)
        cfg, state, _ = gemma_2_transcoder_huggingface_loader(info["repo_id"], sae["path"], device="cpu",
                                                              cfg_overrides={"d_in": D, "d_out": D, "d_sae": 2 * D})
        module = sae_lens.JumpReLUTranscoder.from_dict(handle_config_defaulting(cfg))
        module.load_state_dict(state)
    else:
        module, _, _ = sae_lens.SAE.from_pretrained_with_cfg_and_sparsity(release, sae_id, device="cpu")
    c, meta = module.cfg, module.cfg.metadata
    return module.eval(), {"hook_name": meta.hook_name, "hook_name_out": getattr(meta, "hook_name_out", None),
                           "architecture": c.architecture(), "d_in": c.d_in, "d_sae": c.d_sae,
                           "d_out": getattr(c, "d_out", c.d_in), "apply_b_dec_to_input": c.apply_b_dec_to_input,
                           "normalize_activations": c.normalize_activations,
                           "reshape_activations": c.reshape_activations}


def _their_forward(module, cfg, x):
    import torch

    with torch.no_grad():
        if cfg.get("reshape_activations") == "hook_z":  # SAELens reads hook_z as [..., heads, d_head]
            return module(torch.from_numpy(x).reshape(len(x), 4, D // 4)).reshape(len(x), -1).numpy()
        return module(torch.from_numpy(x)).numpy()


def _model_config(case, llama_dir, family_dirs) -> dict:
    family = CASES[case][2]
    folder = llama_dir if family == "llama" else family_dirs(family)
    return json.loads((folder / "config.json").read_text())


@pytest.mark.parametrize("case", list(CASES))
def test_read_as_saelens_reads_it(hub, case, llama_dir, family_dirs):
    release, sae_id, _, layer, hooks = CASES[case]
    info, sae_entry = _entry(release, sae_id)
    repo, snapshot = _lay_out(hub, case)
    module, theirs = _saelens(case)
    model = _model_config(case, llama_dir, family_dirs)
    their_points = (tl_hook(theirs["hook_name"]), tl_hook(theirs.get("hook_name_out") or theirs["hook_name"]))
    assert their_points == (Point(layer, hooks[0]), Point(layer, hooks[1]))  # the case says what SAELens says
    x = (np.random.default_rng(layer).normal(size=(48, D)) / float(sae_entry.get("norm_scaling_factor") or 1.0))
    x = x.astype(np.float32)
    want = _their_forward(module, theirs, x)
    folder = str(sae_entry["path"])
    hub_sae = resolve_named({"release": release, "sae_id": sae_id}, layer)
    pinned = resolve_named({"hub": json.loads(json.dumps(hub_sae.pin()))}, layer)  # what the workflow hands a job
    assert (pinned.path, pinned.format, pinned.revision, pinned.files) == (hub_sae.path, hub_sae.format,
                                                                           snapshot.name, hub_sae.files)
    ways = {"release": {"release": release, "sae_id": sae_id}, "repo": {"repo": repo, "folder": folder},
            "path": {"path": str(hub_sae.path)}, "pinned": {"hub": hub_sae.pin()}}
    if case == "llama_scope_r1":  # its config.json has no dataset norm: only the catalogue's factor says it
        for way in ("repo", "path"):  # (a pinned entry keeps the release's factor)
            with pytest.raises(CausalKLError) as e:
                route_points({"kind": "sae", **ways.pop(way)}, "s", layer, model, "config.yaml")
            assert "\n" not in str(e.value) and "release + sae_id" in str(e.value)
    for way, named in ways.items():
        entry = {"kind": "sae", **named}
        points = route_points(entry, "s", layer, model, "config.yaml")
        assert points == their_points, (way, points)
        files = read_sae_files(entry, "s", layer)
        assert (files.architecture, files.d_in, files.d_sae, files.d_out) == (
            theirs["architecture"], theirs["d_in"], theirs["d_sae"], theirs["d_out"]), way
        recon, stats = reconstruct(entry, layer, x, model_config=model)
        np.testing.assert_allclose(recon, want, rtol=1e-6, atol=1e-6, err_msg=f"{case} by {way}")
        assert stats["normalize_activations"] == theirs["normalize_activations"] == "none"  # SAELens folded it in
        assert stats["apply_b_dec_to_input"] == theirs["apply_b_dec_to_input"]
        assert stats["architecture"] == theirs["architecture"]
        assert 0 < stats["l0"] < theirs["d_sae"] - 8  # the activation decides: some latents off, most vectors
    ours = load_sae(hub_sae.path, norm_scaling_factor=hub_sae.norm_scaling_factor)  # the loader by path: the same hooks
    assert (ours.point_in, ours.point_out, ours.hook_z) == (*their_points, theirs.get("reshape_activations") == "hook_z")
    # the catalogue entry alone says the same hooks (for the coverage count)
    sites = catalogue_sites(info, sae_entry)
    assert (tl_hook(sites["hook_in"]), tl_hook(sites["hook_out"]), sites["refused"]) == (*their_points, None)


def test_the_catalogue_entries_of_these_formats(tmp_path):
    """Every entry of these formats in the installed catalogue: hooks told from the entry alone, CLTs refused."""
    counts: dict[str, list[int]] = {}
    for release, info in saelens_releases().items():
        for sae in info.get("saes", []):
            sites = catalogue_sites(info, sae)
            if sites is None:
                continue
            read, refused = counts.setdefault(info["conversion_func"], [0, 0])
            if sites["refused"]:
                assert "cross-layer transcoder" in sites["refused"] and sites["hook_in"] is None
                counts[info["conversion_func"]][1] += 1
            else:
                assert tl_hook(sites["hook_in"]) is not None and tl_hook(sites["hook_out"]) is not None, (release, sae)
                counts[info["conversion_func"]][0] += 1
    assert counts == {"llama_scope": [192, 0], "llama_scope_r1_distill": [96, 0], "mwhanna_transcoder": [208, 0],
                      "gemma_2_transcoder": [26, 0], "connor_rob_hook_z": [12, 0], "mntss_clt_layer_transcoder": [0, 26]}


def test_cross_layer_transcoders_are_one_line(hub, tmp_path, llama_dir):
    model = json.loads((llama_dir / "config.json").read_text())
    with pytest.raises(CausalKLError) as e:
        route_points({"kind": "sae", "release": "mntss-gemma-2-2b-2.5m-clt-as-per-layer", "sae_id": "layer_3"}, "s", 3,
                     model, "config.yaml")
    msg = str(e.value)
    assert "\n" not in msg and "routes.s.sae_id" in msg and "cross-layer transcoder" in msg and "one site" in msg
    # Gemma Scope 2's clt folders (which SAELens' gemma_3 loader reads), by path
    folder = tmp_path / "gemma-scope-2-1b-pt" / "clt" / "layer_3_width_16k_l0_small"
    folder.mkdir(parents=True)
    (folder / "params.safetensors").write_bytes(_safetensors({"w_enc": np.zeros((D, 8))}))
    with pytest.raises(CausalKLError) as e:
        route_points({"kind": "sae", "path": str(folder)}, "s", 3, model, "config.yaml")
    assert "\n" not in str(e.value) and "cross-layer transcoder" in str(e.value) and "one site" in str(e.value)
    # mntss' CLT files (W_enc_L / W_dec_L.safetensors beside config.yaml), by path
    clt = tmp_path / "clt-gemma-2-2b-2.5M"
    clt.mkdir()
    (clt / "W_enc_3.safetensors").write_bytes(_safetensors({"W_enc_3": np.zeros((8, D))}))
    for path in (clt, clt / "W_enc_3.safetensors"):
        with pytest.raises(CausalKLError) as e:
            route_points({"kind": "sae", "path": str(path)}, "s", 3, model, "config.yaml")
        assert "\n" not in str(e.value) and "cross-layer transcoder" in str(e.value), path


def test_a_pickle_weights_only_refuses_is_one_line(hub, tmp_path, llama_dir, family_dirs):
    """A hook_z .pt holding more than tensors: refused at parse time (no torch) and by the loader's
    torch.load(weights_only=True), one line each; nothing in it is run."""
    import datetime

    import torch

    repo, snapshot = _lay_out(hub, "hook_z")
    pt = next(snapshot.glob("*.pt"))
    bad = tmp_path / pt.name
    buf = io.BytesIO()
    torch.save({"W_enc": torch.zeros(D, 8), "when": datetime.date(2024, 1, 1)}, buf)
    bad.write_bytes(buf.getvalue())
    (tmp_path / (pt.name.split(".pt")[0] + "_cfg.json")).write_bytes((snapshot / (pt.name.split(".pt")[0] + "_cfg.json")).read_bytes())
    model = _model_config("hook_z", llama_dir, family_dirs)
    for check in (lambda: route_points({"kind": "sae", "path": str(bad)}, "s", 2, model, "config.yaml"),
                  lambda: load_sae(bad)):
        with pytest.raises(CausalKLError) as e:
            check()
        assert "\n" not in str(e.value) and str(bad) in str(e.value) and "weights_only" in str(e.value)


def test_missing_files_and_unknown_formats_are_one_line(hub, monkeypatch, llama_dir, family_dirs):
    from causal_kl import sae_hub

    model = _model_config("mwhanna", llama_dir, family_dirs)
    info, sae = _entry("mwhanna-qwen3-0.6b-transcoders-lowl0", "layer_2")
    lay_out_hub_cache(hub, info["repo_id"], {"layer_2.safetensors": _files("mwhanna", np.random.default_rng(0))["layer_2.safetensors"]})
    with pytest.raises(CausalKLError) as e:  # the weights cached, the wandb config not
        route_points({"kind": "sae", "release": "mwhanna-qwen3-0.6b-transcoders-lowl0", "sae_id": "layer_2"}, "s", 2,
                     model, "config.yaml")
    msg = str(e.value)
    assert "\n" not in msg and "wandb-config.yaml not in the Hugging Face cache" in msg and "hf download" in msg
    # the repo's folder of per-layer files given as a path: one line naming the file to give
    _, snapshot = _lay_out(hub, "mwhanna_14b")
    with pytest.raises(CausalKLError) as e:
        route_points({"kind": "sae", "path": str(snapshot)}, "s", 1, model, "config.yaml")
    assert "\n" not in str(e.value) and "one file per layer (layer_1.safetensors)" in str(e.value)
    assert "layer_{layer}.safetensors" in str(e.value)
    # a newer sae-lens' release of a format nobody reads yet: refused in one line, not an error
    releases = {"future": {"repo_id": "a/b", "conversion_func": "future_format", "saes": [{"id": "s", "path": "p"}]}}
    monkeypatch.setattr(sae_hub, "saelens_releases", lambda *a, **k: releases)
    with pytest.raises(CausalKLError) as e:
        sae_hub.release_sae("future", "s")
    assert "\n" not in str(e.value) and "'future_format' format" in str(e.value)


def test_the_parse_time_check_imports_no_torch(hub, llama_dir, family_dirs):
    """route_points on each format reads configs and tensor headers only (the hook_z pickle's shapes through the
    torch-free unpickler): torch, transformers and safetensors blocked, the points are the ones SAELens says."""
    import subprocess
    import sys

    from workflow_helpers import ROOT, blocked_imports_env

    picked = ("llama_scope_att", "llama_scope_r1", "mwhanna", "gemma_2_transcoder", "hook_z")
    calls = []
    for case in picked:
        release, sae_id, _, layer, hooks = CASES[case]
        _lay_out(hub, case)
        entry = {"kind": "sae", "release": release, "sae_id": sae_id}
        calls.append((entry, layer, _model_config(case, llama_dir, family_dirs), [(layer, h) for h in hooks]))
    script = f"""
import sys
from causal_kl.routes.sae import route_points
for entry, layer, model, want in {calls!r}:
    got = route_points(entry, "s", layer, model, "config.yaml")
    assert [(p.layer, p.hook) for p in got] == [tuple(w) for w in want], (entry, got, want)
print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "safetensors", "sae_lens")))
"""
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("HF_HUB_CACHE", "PYTHONPATH")}
    env.update(HF_HUB_CACHE=str(hub), PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env=blocked_imports_env(("torch", "transformers", "safetensors"), env))
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
