"""SAELens' dictionary_learning_1, qwen_scope, goodfire and deepseek_r1 formats (``causal_kl.sae_dictionary``), the
gated architecture, and the one-line refusals (temporal SAEs, pickles ``weights_only`` refuses).

Every SAE's files are laid out in a temporary Hugging Face cache (``fixtures.lay_out_hub_cache``) as the release's repo
keeps them and read twice: by SAELens' own ``SAE.from_pretrained`` (sae-lens 6.54, offline from the same cache; its
loader picks the format by the release's ``conversion_func``) and by causal-kl, through ``release`` + ``sae_id``, ``repo``
+ ``folder`` and ``path``. The settings (hook, architecture, ``apply_b_dec_to_input``, normalisation, widths, k) and
``decode(encode(x))`` must agree. Goodfire, DeepSeek-R1 and Qwen-Scope's loaders state ``d_in`` (and the first two
``d_sae``) for the real models (4096 x 65536); the tests give SAELens small widths through the one thing
``from_pretrained`` lays over its loader's config, the release's ``config_overrides`` (``get_config_overrides``).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from causal_kl.errors import CausalKLError
from causal_kl.hooks import Point
from causal_kl.routes.sae import check_sae_config, read_sae_files, reconstruct, route_points
from causal_kl.sae import SparseAutoencoder, load_sae, write_saelens_dir
from causal_kl.sae_dictionary import catalogue_site, torch_state_shapes
from causal_kl.sae_hub import release_sae, resolve_named
from fixtures import (dictionary_learning_config, dictionary_learning_state, lay_out_hub_cache, linear_sae_state,
                      qwen_scope_state, torch_save_bytes)

sae_lens = pytest.importorskip("sae_lens")

D, S, N = 16, 48, 64


def _one_line(excinfo, *parts):
    msg = str(excinfo.value)
    assert "\n" not in msg and "Fix:" in msg, msg
    for part in parts:
        assert part in msg, (part, msg)


@pytest.fixture(scope="module")
def releases():
    from causal_kl.sae_hub import saelens_releases

    return saelens_releases()


@pytest.fixture
def cache(offline_hub):
    return offline_hub


@pytest.fixture(scope="module")
def x():
    rng = np.random.default_rng(7)
    return (rng.normal(0, 1, (N, D)) * rng.uniform(0.5, 2, (N, 1)) + 0.5).astype(np.float32)


def _saelens(monkeypatch, release, sae_id, **widths):
    """SAELens' own SAE.from_pretrained, offline; ``widths`` (d_in, d_sae) laid over its loader's config as a
    release's config_overrides are."""
    import sae_lens.saes.sae as saes

    if widths:
        real = saes.get_config_overrides
        monkeypatch.setattr(saes, "get_config_overrides", lambda r, i: {**real(r, i), **widths})
    return sae_lens.SAE.from_pretrained(release, sae_id, device="cpu")


def _theirs(sae, x):
    with torch.no_grad():
        xt = torch.from_numpy(x)
        return sae.decode(sae.encode(xt)).numpy()


def _same_settings(ours: SparseAutoencoder, theirs, k=None):
    cfg = theirs.cfg
    assert ours.architecture == cfg.architecture()
    assert ours.hook_name == cfg.metadata.hook_name
    assert ours.apply_b_dec_to_input == cfg.apply_b_dec_to_input
    assert ours.normalize_activations == cfg.normalize_activations
    assert (ours.d_in, ours.d_sae) == (cfg.d_in, cfg.d_sae)
    if ours.architecture == "topk":
        assert ours.k == cfg.k == k


def _first(releases, release):
    info = releases[release]
    return info, info["saes"][0]


# ------------------------------------------------------------------------------------ dictionary_learning
def _dl_state(cls: str, rng) -> tuple[dict, int | None]:
    return dictionary_learning_state(cls, rng, D, S)


def _dl_config(cls: str, layer: int, k: int | None, submodule: str | None = None) -> bytes:
    return dictionary_learning_config(cls, layer, k, D, S, submodule)


DL_CASES = [  # (dict_class, a release of the catalogue to lay it out under: the loader decides by config.json)
    ("AutoEncoder", "sae_bench_pythia70m_sweep_standard_ctx128_0712"),
    ("GatedAutoEncoder", "sae_bench_pythia70m_sweep_gated_ctx128_0730"),
    ("AutoEncoderTopK", "sae_bench_gemma-2-2b_topk_width-2pow12_date-1109"),
    ("BatchTopKSAE", "llama-3.1-8b-instruct-andyrdt"),
    ("MatryoshkaBatchTopKSAE", "saebench_gemma-2-2b_width-2pow12_date-0108"),
    ("JumpReluAutoEncoder", "gpt-oss-20b-andyrdt"),
]


@pytest.mark.parametrize("cls,release", DL_CASES)
def test_dictionary_learning_as_saelens_reads_it(cache, releases, monkeypatch, x, cls, release):
    import re

    info, entry = _first(releases, release)
    layer = int(re.search(r"resid_post_layer_(\d+)", entry["path"]).group(1))
    state, k = _dl_state(cls, np.random.default_rng(len(cls)))
    lay_out_hub_cache(cache, info["repo_id"], {f"{entry['path']}/config.json": _dl_config(cls, layer, k),
                                               f"{entry['path']}/ae.pt": torch_save_bytes(state)})
    theirs = _saelens(monkeypatch, release, entry["id"])
    ref = _theirs(theirs, x)
    assert np.abs(ref).max() > 0 and not np.allclose(ref, ref[0])  # latents fire, and not all alike

    named = {"kind": "sae", "release": release, "sae_id": entry["id"]}
    hub = resolve_named(named, layer)
    assert hub.format == "dictionary_learning" and hub.files == ("config.json", "ae.pt")
    ours = load_sae(hub.path)
    _same_settings(ours, theirs, k)
    np.testing.assert_allclose(ours.reconstruct(torch.from_numpy(x)).numpy(), ref, rtol=1e-6, atol=1e-6)
    # the same SAE by repo + folder, and by the path of its folder or of its ae.pt
    for entry_ in (named, {"kind": "sae", "repo": info["repo_id"], "folder": entry["path"]},
                   {"kind": "sae", "path": str(hub.path)}, {"kind": "sae", "path": str(hub.path / "ae.pt")}):
        assert check_sae_config(entry_, "s", layer, D, "config.yaml") == (Point(layer), Point(layer))
        recon, stats = reconstruct(entry_, layer, x)
        np.testing.assert_allclose(recon, ref, rtol=1e-6, atol=1e-6)
        assert stats["architecture"] == theirs.cfg.architecture() and stats["hook_name"] == f"blocks.{layer}.hook_resid_post"


def test_dictionary_learning_hooks_and_refusals(tmp_path, x):
    """Sam Marks' dictionaries name their submodule: attn_out / mlp_out are those hooks of the block (SAELens' loader
    calls every dictionary resid_post), embed no point; a dict_class SAELens' loader would misread is one line."""
    state, _ = _dl_state("AutoEncoder", np.random.default_rng(0))
    for sub, point in (("attn_out_layer2", Point(2, "attn_out")), ("mlp_out_layer_4", Point(4, "mlp_out")),
                       ("resid_post_layer_1", Point(1))):
        d = tmp_path / sub
        d.mkdir()
        (d / "config.json").write_bytes(_dl_config("AutoEncoder", 0, None, submodule=sub))
        (d / "ae.pt").write_bytes(torch_save_bytes(state))
        assert load_sae(d).point_in == point
        files = read_sae_files({"kind": "sae", "path": str(d)}, "s", point.layer)
        assert (files.d_in, files.d_sae, files.architecture) == (D, S, "standard")
    d = tmp_path / "embed"
    d.mkdir()
    (d / "config.json").write_bytes(_dl_config("AutoEncoder", 0, None, submodule="embed"))
    (d / "ae.pt").write_bytes(torch_save_bytes(state))
    with pytest.raises(CausalKLError) as e:
        check_sae_config({"kind": "sae", "path": str(d)}, "s", 0, D)
    _one_line(e, "config.json", "hook_embed", "no hook causal-kl splices at")
    (d / "config.json").write_bytes(_dl_config("AutoEncoderNew", 0, None))
    for call in (lambda: load_sae(d), lambda: check_sae_config({"kind": "sae", "path": str(d)}, "s", 0, D)):
        with pytest.raises(CausalKLError) as e:
            call()
        _one_line(e, "config.json", "trainer.dict_class", "AutoEncoderNew")


# ------------------------------------------------------------------------------------------ gated
def test_gated_saelens_format_as_saelens_reads_it(tmp_path, x):
    rng = np.random.default_rng(3)
    t = {"W_enc": rng.normal(0, 0.5, (D, S)), "b_gate": rng.normal(0, 0.3, S), "b_mag": rng.normal(0, 0.3, S),
         "r_mag": rng.normal(0, 0.3, S), "W_dec": rng.normal(0, 0.5, (S, D)), "b_dec": rng.normal(0, 0.5, D)}
    t = {k: v.astype(np.float32) for k, v in t.items()}
    cfg = {"architecture": "gated", "d_in": D, "d_sae": S, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
           "metadata": {"sae_lens_version": "6.54.12", "hook_name": "blocks.2.hook_resid_post", "hook_head_index": None}}
    folder = write_saelens_dir(tmp_path / "gated", t, cfg)
    theirs = sae_lens.SAE.load_from_disk(str(folder), device="cpu")
    assert type(theirs).__name__ == "GatedSAE"
    ours = load_sae(folder, d_model=D, layer=2)
    _same_settings(ours, theirs)
    np.testing.assert_allclose(ours.reconstruct(torch.from_numpy(x)).numpy(), _theirs(theirs, x), rtol=1e-6, atol=1e-6)
    assert check_sae_config({"kind": "sae", "path": str(folder)}, "s", 2, D) == (Point(2), Point(2))
    # a gated SAE read from dictionary_learning's files is saved in SAELens' format, which SAELens reads back
    from causal_kl.sae import save_sae

    again = sae_lens.SAE.load_from_disk(str(save_sae(ours, tmp_path / "saved")), device="cpu")
    np.testing.assert_allclose(_theirs(again, x), _theirs(theirs, x), rtol=1e-6, atol=1e-6)
    with pytest.raises(CausalKLError) as e:  # its gate tensors are required
        write_saelens_dir(tmp_path / "bad", {k: v for k, v in t.items() if k != "r_mag"}, cfg)
        load_sae(tmp_path / "bad")
    _one_line(e, "r_mag", "missing")


# ------------------------------------------------------------------------------------------ qwen_scope
QWEN_RELEASE, QWEN_K, QWEN_S = "qwen-scope-3-1.7b-base-w32k-l50", 50, 32 * 1024


def test_qwen_scope_as_saelens_reads_it(cache, releases, monkeypatch, tmp_path, x):
    info = releases[QWEN_RELEASE]
    entry = next(s for s in info["saes"] if s["id"] == "layer3")
    state = qwen_scope_state(np.random.default_rng(5), D, QWEN_S)
    lay_out_hub_cache(cache, info["repo_id"], {entry["path"]: torch_save_bytes(state)})
    theirs = _saelens(monkeypatch, QWEN_RELEASE, "layer3", d_in=D)
    ref = _theirs(theirs, x)
    named = {"kind": "sae", "release": QWEN_RELEASE, "sae_id": "layer3"}
    hub = resolve_named(named, 3)
    assert hub.format == "qwen_scope" and hub.path.name == "layer3.sae.pt"
    ours = load_sae(hub.path)
    _same_settings(ours, theirs, QWEN_K)
    assert ours.hf_hook_name is None and ours.point_in == Point(3)
    np.testing.assert_allclose(ours.reconstruct(torch.from_numpy(x)).numpy(), ref, rtol=1e-6, atol=1e-6)
    qwen3 = {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "hidden_size": D, "num_attention_heads": 2,
             "head_dim": 8, "num_hidden_layers": 4}
    pinned = {"kind": "sae", "hub": hub.pin()}  # what the workflow hands the jobs: the commit, no SAELens YAML
    for entry_ in (named, pinned, {"kind": "sae", "repo": info["repo_id"], "folder": "layer3.sae.pt"},
                   {"kind": "sae", "path": str(hub.path)}):
        assert route_points(entry_, "s", 3, qwen3, "config.yaml") == (Point(3), Point(3))
        recon, stats = reconstruct(entry_, 3, x, model_config=qwen3)
        np.testing.assert_allclose(recon, ref, rtol=1e-6, atol=1e-6)
        assert stats["k"] == QWEN_K and stats["l0"] == QWEN_K
    # the route's format key names these formats too
    by_path = {"kind": "sae", "path": str(hub.path)}
    assert check_sae_config({**by_path, "format": "qwen_scope"}, "s", 3, D) == (Point(3), Point(3))
    with pytest.raises(CausalKLError) as e:
        check_sae_config({**by_path, "format": "goodfire"}, "s", 3, D)
    _one_line(e, "format is goodfire", "holds a qwen_scope SAE")
    # at another layer than the file's, and a layer not in the cache (the download command names the file)
    with pytest.raises(CausalKLError) as e:
        route_points({"kind": "sae", "path": str(hub.path)}, "s", 2, qwen3, "config.yaml")
    _one_line(e, "layer3.sae.pt", "hook_name", "use it at layer 3")
    with pytest.raises(CausalKLError) as e:
        check_sae_config({**named, "sae_id": "layer5"}, "s", 5, D, "config.yaml")
    _one_line(e, "layer5.sae.pt not in the Hugging Face cache", f"download {info['repo_id']} layer5.sae.pt")
    # the parse-time check imports no torch (nor safetensors, transformers, sae_lens): the pickle's opcodes are read
    from workflow_helpers import ROOT, blocked_imports_env

    parse = (f"import sys\nfrom causal_kl.routes.sae import route_points\n"
             f"print(route_points({named!r}, 's', 3, {qwen3!r}, 'config.yaml'))\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'safetensors', 'sae_lens')))")
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "HF_HUB_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", parse], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env=blocked_imports_env(("torch", "transformers", "safetensors"), env))
    assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
    # outside a folder named after its repo, k is nowhere: one line
    lone = tmp_path / "layer3.sae.pt"
    lone.write_bytes(hub.path.read_bytes())
    with pytest.raises(CausalKLError) as e:
        load_sae(lone)
    _one_line(e, "layer3.sae.pt", "k", "SAE-Res-")


# ------------------------------------------------------------------------------------ goodfire, deepseek_r1
ONE_FILE = [  # (release, tensor names as the file keeps them (encoder, decoder, their biases), layer)
    ("goodfire-llama-3.1-8b-instruct", ("encoder_linear", "decoder_linear"), 19),
    ("goodfire-llama-3.3-70b-instruct", ("encoder_linear", "decoder_linear"), 50),
    ("deepseek-r1-distill-llama-8b-qresearch", ("encoder", "decoder"), 19),
]


@pytest.mark.parametrize("release,names,layer", ONE_FILE)
def test_goodfire_and_deepseek_as_saelens_reads_them(cache, releases, monkeypatch, x, release, names, layer):
    info, entry = _first(releases, release)
    format = info["conversion_func"]
    state = linear_sae_state(format, np.random.default_rng(layer), D, S)
    assert {n.split(".")[0] for n in state} == set(names)  # the file's own tensor names
    lay_out_hub_cache(cache, info["repo_id"], {entry["path"]: torch_save_bytes(state)})
    theirs = _saelens(monkeypatch, release, entry["id"], d_in=D, d_sae=S)
    ref = _theirs(theirs, x)
    named = {"kind": "sae", "release": release, "sae_id": entry["id"]}
    hub = resolve_named(named, layer)
    assert hub.format == release.split("-")[0].replace("deepseek", "deepseek_r1")
    ours = load_sae(hub.path)
    _same_settings(ours, theirs)
    np.testing.assert_allclose(ours.reconstruct(torch.from_numpy(x)).numpy(), ref, rtol=1e-6, atol=1e-6)
    for entry_ in (named, {"kind": "sae", "repo": info["repo_id"], "folder": entry["path"]},
                   {"kind": "sae", "path": str(hub.path)}):
        assert check_sae_config(entry_, "s", layer, D, "config.yaml") == (Point(layer), Point(layer))
        np.testing.assert_allclose(reconstruct(entry_, layer, x)[0], ref, rtol=1e-6, atol=1e-6)


class NotATensor:
    """Something a pickle can carry that torch.load(weights_only=True) refuses (it would run its reduction)."""


def test_a_pickle_weights_only_refuses_is_one_line(cache, releases, tmp_path):
    info, entry = _first(releases, "goodfire-llama-3.1-8b-instruct")
    state = {"encoder_linear.weight": torch.zeros(S, D), "encoder_linear.bias": torch.zeros(S),
             "decoder_linear.weight": torch.zeros(D, S), "decoder_linear.bias": torch.zeros(D), "extra": NotATensor()}
    path = tmp_path / "Llama-3.1-8B-Instruct-SAE-l19.pth"
    path.write_bytes(torch_save_bytes(state))
    with pytest.raises(pickle.UnpicklingError):  # torch itself refuses it under weights_only
        torch.load(path, weights_only=True)
    lay_out_hub_cache(cache, info["repo_id"], {entry["path"]: path.read_bytes()})
    for call in (lambda: load_sae(path), lambda: check_sae_config({"kind": "sae", "path": str(path)}, "s", 19, D),
                 lambda: check_sae_config({"kind": "sae", "release": "goodfire-llama-3.1-8b-instruct",
                                           "sae_id": entry["id"]}, "s", 19, D)):
        with pytest.raises(CausalKLError) as e:
            call()
        _one_line(e, "Llama-3.1-8B-Instruct-SAE-l19.pth", "weights_only", "NotATensor")
    # a plain state dict's shapes are read without torch's unpickler, as the parse-time check reads them
    del state["extra"]
    path.write_bytes(torch_save_bytes(state))
    assert torch_state_shapes(path) == {k: tuple(v.shape) for k, v in state.items()}


# ------------------------------------------------------------------------------------------ temporal
def test_temporal_saes_are_refused_with_the_reason(releases, tmp_path):
    for release in ("temporal-sae-gemma-2-2b", "temporal-sae-llama-3.1-8b"):
        sae_id = releases[release]["saes"][0]["id"]
        with pytest.raises(CausalKLError) as e:
            release_sae(release, sae_id, "config.yaml", "s")
        _one_line(e, "config.yaml", "routes.s.release", "temporal", "earlier activations")
    folder = tmp_path / "gemma-2-2B" / "layer_12" / "temporal"
    folder.mkdir(parents=True)
    (folder / "conf.yaml").write_text("sae: {}\n")
    (folder / "latest_ckpt.safetensors").write_bytes(b"")
    for call in (lambda: load_sae(folder), lambda: check_sae_config({"kind": "sae", "path": str(folder)}, "s", 12, D)):
        with pytest.raises(CausalKLError) as e:
            call()
        _one_line(e, "temporal", "earlier activations")


# ------------------------------------------------------------------------------------------ the catalogue
def test_catalogue_site_agrees_with_saelens_config_getters(releases):
    """Where SAELens' config getter reads only the catalogue (Qwen-Scope, Goodfire, DeepSeek-R1: names, no files),
    ``catalogue_site`` says the same hook and architecture for every entry; a dictionary_learning entry's hook is its
    path's layer and its architecture is the files' to say."""
    from sae_lens.loading.pretrained_sae_loaders import NAMED_PRETRAINED_SAE_CONFIG_GETTERS as getters

    seen = {}
    for release, info in releases.items():
        conv = info.get("conversion_func")
        for entry in info["saes"]:
            site = catalogue_site(info, entry)
            if conv in ("qwen_scope", "goodfire", "deepseek_r1"):
                cfg = getters[conv](info["repo_id"], entry["path"], "cpu", False, None)
                assert (site["hook_name"], site["architecture"]) == (cfg["hook_name"], cfg["architecture"]), (release, entry)
            elif conv == "dictionary_learning_1":
                assert site["architecture"] is None and site["hook_name"].endswith(".hook_resid_post")
                assert f"layer_{site['hook_name'].split('.')[1]}" in entry["path"]
            elif conv not in ("temporal",):
                assert site["format"] is None
                continue
            seen[conv] = seen.get(conv, 0) + 1
    assert seen == {"dictionary_learning_1": 838, "qwen_scope": 544, "goodfire": 2, "deepseek_r1": 1, "temporal": 3}
