"""SAEs by name (causal_kl.sae_hub): a SAELens release + SAE id, or a hub repo + folder, read from the Hugging Face
cache only, offline.

Each test lays out a cache in a temp dir the way huggingface_hub's downloads do (``tests/fixtures.py``:
``lay_out_hub_cache``; huggingface_hub's own ``scan_cache_dir`` reads it back) and points ``HF_HUB_CACHE`` at it.
Releases are real ones of the installed sae-lens' ``pretrained_saes.yaml``, read here with PyYAML for the expected
folder and norm scaling factor; where SAELens can load the SAE itself (``SAE.from_pretrained``, offline from the
same cache) it is the peer.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from causal_kl.errors import CausalKLError
from causal_kl.routes.sae import check_sae_config, reconstruct
from causal_kl.sae import write_saelens_dir
from causal_kl.sae_hub import pretrained_saes_file, resolve_named
from fixtures import lay_out_hub_cache
from test_sae import D_IN, _one_line_error, random_tensors, reference_sae, saelens_cfg_for, x  # noqa: F401
from test_sae_sparsify import sparsify_reference, sparsify_tensors, write_sparsify

GEMMA = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
BASE = ("W_enc", "b_enc", "W_dec", "b_dec")


@pytest.fixture(scope="module")
def releases():
    """SAELens' release list as installed, read directly (what the route must follow)."""
    import yaml

    pytest.importorskip("sae_lens")
    path = pretrained_saes_file()
    with open(path) as f:
        return yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _release_sae(releases, release, sae_id):
    info = releases[release]
    return info, next(s for s in info["saes"] if s["id"] == sae_id)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty hub cache that HF_HUB_CACHE points at."""
    path = tmp_path / "hub"
    path.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(path))
    return path


def _npz_bytes(t):
    buf = io.BytesIO()
    np.savez(buf, **{n: t[n] for n in GEMMA})
    return buf.getvalue()


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _saelens_bytes(tmp, t, cfg) -> dict[str, bytes]:
    return _folder_bytes(write_saelens_dir(tmp, {n: t[n] for n in BASE}, cfg))


def _under(folder: str, files: dict[str, bytes]) -> dict[str, bytes]:
    return {f"{folder}/{name}": data for name, data in files.items()}


# ----------------------------------------------------------------------------------- releases
def test_a_release_is_read_from_the_cache(cache, releases, x):
    from huggingface_hub import scan_cache_dir

    t = random_tensors(seed=3)
    info, sae = _release_sae(releases, "gemma-scope-2b-pt-res-canonical", "layer_3/width_16k/canonical")
    commit = lay_out_hub_cache(cache, info["repo_id"], {f"{sae['path']}/params.npz": _npz_bytes(t)})
    seen = {r.repo_id: r for r in scan_cache_dir(cache).repos}  # huggingface_hub reads the layout as its own
    assert {rev.commit_hash for rev in seen[info["repo_id"]].revisions} == {commit}

    entry = {"kind": "sae", "release": "gemma-scope-2b-pt-res-canonical", "sae_id": "layer_{layer}/width_16k/canonical"}
    hub = resolve_named(entry, 3)
    assert (hub.repo_id, hub.folder, hub.revision, hub.format) == (info["repo_id"], sae["path"], commit, "gemma_scope")
    assert hub.fingerprint() == f"{info['repo_id']}@{commit}/{sae['path']}"
    check_sae_config(entry, "s", 3, D_IN, "config.yaml")
    recon, stats = reconstruct(entry, 3, x, "cpu", "config routes.s")
    np.testing.assert_allclose(recon, reference_sae(x, t, "jumprelu", apply_b_dec=False)[1], rtol=1e-4, atol=1e-4)
    assert stats["sae_name"] == "gemma-scope-2b-pt-res-canonical/layer_3/width_16k/canonical"
    assert stats["sae_revision"] == hub.fingerprint() and stats["hook_name"] == "blocks.3.hook_resid_post"
    # the hook comes from the repo's layout (layer_3 of a -res repo): at another layer it is refused
    fixed = {**entry, "sae_id": "layer_3/width_16k/canonical"}
    for call in (lambda: check_sae_config(fixed, "s", 4, D_IN, "config.yaml"), lambda: reconstruct(fixed, 4, x)):
        with pytest.raises(CausalKLError) as e:
            call()
        _one_line_error(e, "hook_name", "use it at layer 3", "check_hook")
    # the model's width is checked too
    with pytest.raises(CausalKLError) as e:
        check_sae_config(entry, "s", 3, D_IN + 1, "config.yaml")
    _one_line_error(e, "params.npz", "d_in", f"width is {D_IN + 1}")


def _saelens_from_pretrained(monkeypatch, cache, release, sae_id):
    """SAELens' own SAE.from_pretrained, offline, from the same cache."""
    sae_lens = pytest.importorskip("sae_lens")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return sae_lens.SAE.from_pretrained(release, sae_id, device="cpu")


def test_norm_scaling_factor_and_config_overrides_as_saelens_applies_them(cache, releases, monkeypatch, tmp_path, x):
    t = random_tensors(seed=4)
    # gemma-2b-res-jb lists a norm_scaling_factor for blocks.12.hook_resid_post: folded in when cfg.json says
    # expected_average_only_in (SAELens' SAE.from_pretrained), as the route's reconstruction must
    info, sae = _release_sae(releases, "gemma-2b-res-jb", "blocks.12.hook_resid_post")
    factor = float(sae["norm_scaling_factor"])
    cfg = saelens_cfg_for("standard", True, "expected_average_only_in", hook="blocks.12.hook_resid_post")
    lay_out_hub_cache(cache, info["repo_id"], _under(sae["path"], _saelens_bytes(tmp_path / "a", t, cfg)))
    entry = {"kind": "sae", "release": "gemma-2b-res-jb", "sae_id": "blocks.12.hook_resid_post"}
    check_sae_config(entry, "s", 12, D_IN, "config.yaml")  # no activation_scaler.json: the release gives the factor
    recon, _ = reconstruct(entry, 12, x)
    ref = reference_sae(x, t, "standard", True, "expected_average_only_in", scale=factor)[1]
    np.testing.assert_allclose(recon, ref, rtol=1e-4, atol=1e-4)
    theirs = _saelens_from_pretrained(monkeypatch, cache, "gemma-2b-res-jb", "blocks.12.hook_resid_post")
    with torch.no_grad():
        np.testing.assert_allclose(recon, theirs.decode(theirs.encode(torch.from_numpy(x))).numpy(), rtol=1e-4, atol=1e-4)
    # the same folder named by repo + folder has no release to give the factor: refused, saying where it would come from
    by_repo = {"kind": "sae", "repo": info["repo_id"], "folder": sae["path"]}
    with pytest.raises(CausalKLError) as e:
        check_sae_config(by_repo, "s", 12, D_IN, "config.yaml")
    _one_line_error(e, "cfg.json", "normalize_activations", "activation_scaler.json", "release")
    # a release SAE for which the release lists no factor
    info17, sae17 = _release_sae(releases, "gemma-2b-res-jb", "blocks.17.hook_resid_post")
    assert "norm_scaling_factor" not in sae17
    cfg17 = saelens_cfg_for("standard", True, "expected_average_only_in", hook="blocks.17.hook_resid_post")
    lay_out_hub_cache(cache, info17["repo_id"], _under(sae17["path"], _saelens_bytes(tmp_path / "b", t, cfg17)))
    with pytest.raises(CausalKLError) as e:
        check_sae_config({**entry, "sae_id": "blocks.17.hook_resid_post"}, "s", 17, D_IN, "config.yaml")
    _one_line_error(e, "normalize_activations", "lists no norm_scaling_factor", "gemma-2b-res-jb/blocks.17.hook_resid_post")

    # mistral-7b-res-wg's config_overrides set normalize_activations: constant_norm_rescale over its cfg.json
    info, sae = _release_sae(releases, "mistral-7b-res-wg", "blocks.8.hook_resid_pre")
    assert info["config_overrides"]["normalize_activations"] == "constant_norm_rescale"
    cfg = saelens_cfg_for("standard", True, "none", hook="blocks.8.hook_resid_pre")
    lay_out_hub_cache(cache, info["repo_id"], _under(sae["path"], _saelens_bytes(tmp_path / "c", t, cfg)))
    entry = {"kind": "sae", "release": "mistral-7b-res-wg", "sae_id": "blocks.8.hook_resid_pre"}
    check_sae_config(entry, "s", 7, D_IN, "config.yaml")  # the input of block 8 = layer 7
    recon, _ = reconstruct(entry, 7, x)
    np.testing.assert_allclose(recon, reference_sae(x, t, "standard", True, "constant_norm_rescale")[1], rtol=1e-4, atol=1e-4)
    theirs = _saelens_from_pretrained(monkeypatch, cache, "mistral-7b-res-wg", "blocks.8.hook_resid_pre")
    with torch.no_grad():
        xt = torch.from_numpy(x)
        np.testing.assert_allclose(recon, theirs(xt).numpy(), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------ repo + folder
def test_repo_and_folder_and_a_new_revision(cache, tmp_path, x):
    """A sparsify release by repo + folder; the cache's main moving to a new commit changes the fingerprint and the
    weights read; an entry pinned to the old commit (as the workflow passes it to its jobs) still reads the old one."""
    repo = "EleutherAI/sae-pythia-70m-32k"
    old_t, new_t = sparsify_tensors(seed=0), sparsify_tensors(seed=1)
    old = lay_out_hub_cache(cache, repo, _under("layers.2", _folder_bytes(write_sparsify(tmp_path / "old" / "layers.2", old_t))))
    entry = {"kind": "sae", "repo": repo, "folder": "layers.{layer}"}
    check_sae_config(entry, "s", 2, D_IN, "config.yaml")
    first = resolve_named(entry, 2)
    assert (first.format, first.revision, first.folder) == ("sparsify", old, "layers.2")
    recon, stats = reconstruct(entry, 2, x)
    np.testing.assert_allclose(recon, sparsify_reference(x, old_t)[1], rtol=1e-4, atol=1e-4)
    assert stats["hook_name"] == "blocks.2.hook_resid_post" and stats["sae_revision"] == f"{repo}@{old}/layers.2"
    pinned = {**entry, "hub": first.pin()}
    json.dumps(pinned)  # a Snakemake param

    new = lay_out_hub_cache(cache, repo, _under("layers.2", _folder_bytes(write_sparsify(tmp_path / "new" / "layers.2", new_t))))
    assert new != old
    second = resolve_named(entry, 2)
    assert second.revision == new and second.fingerprint() != first.fingerprint()
    np.testing.assert_allclose(reconstruct(entry, 2, x)[0], sparsify_reference(x, new_t)[1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(reconstruct(pinned, 2, x)[0], sparsify_reference(x, old_t)[1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(reconstruct({**entry, "revision": old}, 2, x)[0], sparsify_reference(x, old_t)[1],
                               rtol=1e-4, atol=1e-4)


def test_files_not_in_the_cache_are_one_line_with_the_download(cache, releases, tmp_path, x, monkeypatch):
    import socket

    from huggingface_hub import constants

    # online allowed, the network refused: resolution never tries it
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket.socket, "connect", lambda *a, **k: (_ for _ in ()).throw(AssertionError("network used")))
    info, sae = _release_sae(releases, "gemma-scope-2b-pt-res-canonical", "layer_3/width_16k/canonical")
    entry = {"kind": "sae", "release": "gemma-scope-2b-pt-res-canonical", "sae_id": "layer_3/width_16k/canonical"}
    for call in (lambda: check_sae_config(entry, "s", 3, D_IN, "config.yaml"), lambda: reconstruct(entry, 3, x, "cpu", "config.yaml")):
        with pytest.raises(CausalKLError) as e:
            call()
        _one_line_error(e, "config.yaml", "release", f"{info['repo_id']}: {sae['path']}/params.npz not in the Hugging Face cache",
                        str(cache), f'once: hf download {info["repo_id"]} --include "{sae["path"]}/*"')
    # a SAELens release half downloaded: the missing file is named
    info, sae = _release_sae(releases, "gemma-2b-res-jb", "blocks.0.hook_resid_post")
    files = _saelens_bytes(tmp_path / "a", random_tensors(), saelens_cfg_for("standard", True, "none", hook="blocks.0.hook_resid_post"))
    lay_out_hub_cache(cache, info["repo_id"], _under(sae["path"], {"cfg.json": files["cfg.json"]}))
    with pytest.raises(CausalKLError) as e:
        check_sae_config({"kind": "sae", "release": "gemma-2b-res-jb", "sae_id": "blocks.0.hook_resid_post"}, "s", 0, D_IN, "config.yaml")
    _one_line_error(e, f"{sae['path']}/sae_weights.safetensors not in the Hugging Face cache", "hf download")
    assert "cfg.json," not in str(e.value)
    # repo + folder, at a revision: the command pins it
    with pytest.raises(CausalKLError) as e:
        check_sae_config({"kind": "sae", "repo": "EleutherAI/sae-llama-3-8b-32x", "folder": "layers.{layer}", "revision": "v2"},
                         "s", 5, D_IN, "config.yaml")
    _one_line_error(e, "routes.s.repo", "EleutherAI/sae-llama-3-8b-32x@v2", 'hf download EleutherAI/sae-llama-3-8b-32x --include "layers.5/*" --revision v2')
    # the cached files of a truncated download are refused too (the same check as for a local SAE)
    t = sparsify_tensors()
    files = _folder_bytes(write_sparsify(tmp_path / "tr" / "layers.1", t))
    files["sae.safetensors"] = files["sae.safetensors"][:-64]
    lay_out_hub_cache(cache, "EleutherAI/sae-llama-3-8b-32x", _under("layers.1", files))
    with pytest.raises(CausalKLError) as e:
        check_sae_config({"kind": "sae", "repo": "EleutherAI/sae-llama-3-8b-32x", "folder": "layers.1"}, "s", 1, D_IN, "config.yaml")
    _one_line_error(e, "layers.1/sae.safetensors", "truncated", "64 missing")


@pytest.mark.parametrize("case", ["unknown_release", "unknown_id", "clt", "centred", "revision_with_path"])
def test_what_is_refused(cache, releases, case, tmp_path):
    entry, parts = {
        "unknown_release": ({"release": "gemma-scope-2b-pt-res-canonicall", "sae_id": "x"},
                            ["routes.s.release", "not a release", "did you mean 'gemma-scope-2b-pt-res-canonical'", "repo + folder"]),
        "unknown_id": ({"release": "gemma-scope-2b-pt-res-canonical", "sae_id": "layer_3/width_16k/canonicall"},
                       ["routes.s.sae_id", "not an SAE of release", "did you mean 'layer_3/width_16k/canonical'"]),
        "clt": ({"release": "mntss-gemma-2-2b-2.5m-clt-as-per-layer", "sae_id": "layer_3"},
                ["routes.s.sae_id", "cross-layer transcoder", "one site"]),
        "centred": ({"release": "gpt2-small-res-jb", "sae_id": "blocks.3.hook_resid_pre"},
                    ["routes.s.release", "center_writing_weights", "mean-centred"]),
        "revision_with_path": ({"path": str(tmp_path), "revision": "main"}, ["routes.s.revision", "local path"]),
    }[case]
    with pytest.raises(CausalKLError) as e:
        check_sae_config({"kind": "sae", **entry}, "s", 3, D_IN, "config.yaml")
    _one_line_error(e, "config.yaml", *parts)


def test_gemma_scope_embedding_saes_are_not_a_layer(cache, releases):
    from causal_kl.sae_format import gemma_scope_hook_from_path

    assert gemma_scope_hook_from_path(Path("/c/models--google--gemma-scope-2b-pt-res/snapshots/a/embedding/width_4k/l0_6")) == "hook_embed"
    info, sae = _release_sae(releases, "gemma-scope-2b-pt-res", "embedding/width_4k/average_l0_6")
    lay_out_hub_cache(cache, info["repo_id"], {f"{sae['path']}/params.npz": _npz_bytes(random_tensors())})
    with pytest.raises(CausalKLError) as e:
        check_sae_config({"kind": "sae", "release": "gemma-scope-2b-pt-res", "sae_id": sae["id"]}, "s", 0, D_IN, "config.yaml")
    _one_line_error(e, "hook_name", "hook_embed", "not the output of a decoder block")


# ---------------------------------------------------------------------- what the parse imports
def test_imports_at_parse_time_and_in_jobs_without_sae_lens(cache, releases, tmp_path):
    """The parse-time check of a named route imports neither torch, transformers, safetensors nor sae_lens (its YAML is
    found without importing it); where sae-lens is not installed a release is one line, and the workflow's pinned
    entry (what a job receives) loads without it."""
    from workflow_helpers import ROOT, blocked_imports_env

    t = random_tensors(seed=5)
    info, sae = _release_sae(releases, "gemma-scope-2b-pt-res-canonical", "layer_3/width_16k/canonical")
    lay_out_hub_cache(cache, info["repo_id"], {f"{sae['path']}/params.npz": _npz_bytes(t)})
    entry = {"kind": "sae", "release": "gemma-scope-2b-pt-res-canonical", "sae_id": "layer_{layer}/width_16k/canonical"}
    pinned = {"kind": "sae", "hub": resolve_named(entry, 3).pin()}
    env = {"HF_HUB_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    parse = f"""
import sys
from causal_kl.routes.sae import check_sae_config
check_sae_config({entry!r}, "s", 3, {D_IN}, "config.yaml")
print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "safetensors", "sae_lens")))
"""
    out = subprocess.run([sys.executable, "-c", parse], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env=blocked_imports_env(("torch", "transformers", "safetensors"), {**_base_env(), **env}))
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
    job = f"""
import numpy as np
from causal_kl.errors import CausalKLError
from causal_kl.routes.sae import check_sae_config, reconstruct
try:
    check_sae_config({entry!r}, "s", 3, {D_IN}, "config.yaml")
except CausalKLError as e:
    print(e)
recon, _ = reconstruct({pinned!r}, 3, np.load({str(tmp_path / 'x.npy')!r}))
np.save({str(tmp_path / 'recon.npy')!r}, recon)
"""
    x = np.random.default_rng(0).normal(size=(6, D_IN)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = subprocess.run([sys.executable, "-c", job], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=blocked_imports_env(("sae_lens",), {**_base_env(), **env}))
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip()
    assert "\n" not in line and "routes.s.release" in line and "sae-lens is not installed" in line and "repo + folder" in line
    np.testing.assert_allclose(np.load(tmp_path / "recon.npy"), reference_sae(x, t, "jumprelu", apply_b_dec=False)[1],
                               rtol=1e-4, atol=1e-4)


def _base_env():
    import os

    return {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "PYTHONPATH")}
