"""Every Gemma Scope 2 artifact SAELens lists for google/gemma-3-27b-it is read, at the points SAELens says.

The claim (README): causal-kl reads all 1,431 SAEs and transcoders of the releases ``gemma-scope-2-27b-it-{res,att,mlp,
transcoders}`` and their ``-all`` variants in the installed sae-lens' ``pretrained_saes.yaml``. This test holds us to
it: for **every** entry of those releases it lays out, in a temporary Hugging Face cache
(``fixtures.lay_out_hub_cache``), the folder the entry names in ``google/gemma-scope-2-27b-it`` as the hub holds it
and SAELens' gemma_3 loader reads it (``config.json`` + ``params.safetensors`` with ``w_enc``, ``w_dec``, ``b_enc``,
``b_dec``, ``threshold`` and, for an ``_affine`` transcoder, ``affine_skip_connection``), names it in an ``sae`` route
by ``release`` + ``sae_id``, and asks ``route_points`` where it reads and splices in a gemma-3-27b-it-shaped model
(``Gemma3ForConditionalGeneration``, 62 layers; widths shrunk so the files stay small: hidden 16, 4 heads x head_dim 6
= 24 at ``attn.hook_z``, and each width variant's ``d_sae`` is its width / 1024).

Each entry must be read (no error) at the points SAELens' gemma_3 loader names (``get_gemma_3_config_from_hf`` run on
the same cached folder, offline: only its HTTP read of the safetensors header is replaced by the cached file's header):
``resid_post`` -> (L, resid_post); ``attn_out`` -> (L, attn_z); ``mlp_out`` -> (L, mlp_out); ``transcoder`` ->
(L, mlp_in) -> (L, mlp_out), a skip transcoder when ``_affine``; with SAELens' architecture and widths. The folder's
``config.json`` comes in three forms: with the keys the published configs have (``hf_hook_point_in``,
``hf_hook_point_out`` -- equal to the input for an SAE --, ``type`` sae/transcoder, ``width``, ``l0``,
``affine_connection``, ``model_name``, ``architecture: jump_relu``), as SAELens infers it when a folder has none
(``_infer_gemma_3_raw_cfg_dict``), and absent (the folder's name says it all).

Refused entries would have to be listed in ``REFUSED`` with the reason; there are none (these releases hold no
cross-layer ``clt`` or crosscoder folder, the Gemma Scope 2 artifacts causal-kl refuses). A handful of folders (one
per release and kind) are also run: our reconstruction against SAELens' own module loaded by its own loader.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict

import numpy as np
import pytest

from causal_kl.errors import CausalKLError
from causal_kl.hooks import Point, tl_hook
from causal_kl.routes.sae import reconstruct, route_points
from causal_kl.sae_format import safetensors_shapes
from causal_kl.sae_hub import release_sae

from fixtures import lay_out_hub_cache

sae_lens = pytest.importorskip("sae_lens")

REPO = "google/gemma-scope-2-27b-it"
EXPECTED = {  # SAELens 6.54's pretrained_saes.yaml: the entries of each release (the README's 1,431)
    "gemma-scope-2-27b-it-res": 52, "gemma-scope-2-27b-it-res-all": 248,
    "gemma-scope-2-27b-it-att": 36, "gemma-scope-2-27b-it-att-all": 248,
    "gemma-scope-2-27b-it-mlp": 36, "gemma-scope-2-27b-it-mlp-all": 248,
    "gemma-scope-2-27b-it-transcoders": 72, "gemma-scope-2-27b-it-transcoders-all": 491,
}
TOTAL = 1431
REFUSED: dict[str, str] = {}
"""``release/sae_id`` -> why causal-kl refuses it. Empty: every entry is read."""

D, HEADS, HEAD_DIM, N_LAYERS = 16, 4, 6, 62
D_Z = HEADS * HEAD_DIM
MODEL = {  # google/gemma-3-27b-it's config.json, widths shrunk (5376; 32 heads x 128)
    "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
    "text_config": {"model_type": "gemma3_text", "hidden_size": D, "num_attention_heads": HEADS, "head_dim": HEAD_DIM,
                    "num_key_value_heads": 2, "num_hidden_layers": N_LAYERS},
    "vision_config": {"model_type": "siglip_vision_model"},
}
HF_IN = {"resid_post": "model.layers.{L}.output", "attn_out": "model.layers.{L}.self_attn.o_proj.input",
         "mlp_out": "model.layers.{L}.post_feedforward_layernorm.output",
         "transcoder": "model.layers.{L}.pre_feedforward_layernorm.output"}
"""Where each folder kind reads (SAELens' ``_infer_gemma_3_raw_cfg_dict``)."""
POINTS = {"resid_post": ("resid_post", "resid_post"), "attn_out": ("attn_z", "attn_z"),
          "mlp_out": ("mlp_out", "mlp_out"), "transcoder": ("mlp_in", "mlp_out")}
"""Folder kind -> (hook in, hook out): what the gemma_3 loader's hook names say."""
VARIANTS = ("published", "saelens_inferred", "no_config")


def _catalogue() -> list[tuple[str, str, str]]:
    """(release, sae_id, folder) of every entry of the 27b-it Gemma Scope 2 releases, as installed."""
    from causal_kl.sae_hub import saelens_releases

    out = []
    for release, info in saelens_releases().items():
        if release.startswith("gemma-scope-2-27b-it-"):
            assert info["repo_id"] == REPO and info.get("conversion_func") == "gemma_3", release
            out += [(release, str(s["id"]), str(s["path"])) for s in info["saes"]]
    return out


def _kind(folder: str) -> str:
    top = folder.split("/")[0].removesuffix("_all")
    assert top in POINTS, folder  # a folder kind this test does not know: the claim needs another look
    return top


def _layer(folder: str) -> int:
    return int(re.search(r"(?:^|/)layer_(\d+)_", folder).group(1))


def _d_sae(folder: str) -> int:
    """The width variant, shrunk: width_16k -> 16, width_1m -> 1024 (so a folder's files are told apart)."""
    m = re.search(r"_width_(\d+)([km])(?:_|$)", folder)
    return int(m.group(1)) * (1024 if m.group(2) == "m" else 1)


def _widths(kind: str) -> int:
    return D_Z if kind == "attn_out" else D


def _config(variant: str, folder: str, l0: int | None) -> dict | None:
    kind, layer, affine = _kind(folder), _layer(folder), folder.endswith("_affine")
    if variant == "no_config":
        return None
    if variant == "saelens_inferred":
        from sae_lens.loading.pretrained_sae_loaders import _infer_gemma_3_raw_cfg_dict

        return _infer_gemma_3_raw_cfg_dict(REPO, folder)
    hf_in = HF_IN[kind].format(L=layer)
    hf_out = HF_IN["mlp_out"].format(L=layer) if kind == "transcoder" else hf_in
    return {"hf_hook_point_in": hf_in, "hf_hook_point_out": hf_out, "width": _d_sae(folder),
            "model_name": "google/gemma-3-27b-it", "architecture": "jump_relu", "l0": l0, "affine_connection": affine,
            "type": "transcoder" if kind == "transcoder" else "sae"}


def _params(rng, folder: str) -> bytes:
    from safetensors.numpy import save

    kind, d_sae = _kind(folder), _d_sae(folder)
    d_in = d_out = _widths(kind)
    t = {"w_enc": rng.normal(0, 0.4, (d_in, d_sae)), "b_enc": rng.normal(0, 0.3, d_sae),
         "w_dec": rng.normal(0, 0.4, (d_sae, d_out)), "b_dec": rng.normal(0, 0.3, d_out),
         "threshold": rng.uniform(0.05, 0.8, d_sae)}
    if folder.endswith("_affine"):
        t["affine_skip_connection"] = rng.normal(0, 0.3, (d_in, d_out))
    return save({k: v.astype(np.float32) for k, v in t.items()})


@pytest.fixture(scope="module")
def catalogue():
    return _catalogue()


@pytest.fixture(scope="module")
def l0s():
    from causal_kl.sae_hub import saelens_releases

    return {(r, str(s["id"])): s.get("l0") for r, info in saelens_releases().items()
            if r.startswith("gemma-scope-2-27b-it-") for s in info["saes"]}


def _hub(tmp_path, monkeypatch, catalogue, l0s, variant: str):
    """The cache holding every entry's folder (one snapshot of the repo), pointed at by HF_HUB_CACHE and SAELens'
    offline hf_hub_download; SAELens' header read over HTTP answered from the cached file. Returns the snapshot."""
    from huggingface_hub import constants
    from sae_lens.loading import pretrained_sae_loaders as loaders

    rng = np.random.default_rng(0)
    files = {}
    for release, sae_id, folder in catalogue:
        if f"{folder}/params.safetensors" in files:
            continue
        files[f"{folder}/params.safetensors"] = _params(rng, folder)
        cfg = _config(variant, folder, l0s[release, sae_id])
        if cfg is not None:
            files[f"{folder}/config.json"] = json.dumps(cfg).encode()
    cache = tmp_path / "hub"
    commit = lay_out_hub_cache(cache, REPO, files)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    snapshot = cache / ("models--" + REPO.replace("/", "--")) / "snapshots" / commit

    def header_shapes(repo_id, filename):
        assert repo_id == REPO, repo_id
        return {k: list(v) for k, v in safetensors_shapes(snapshot / filename).items()}

    monkeypatch.setattr(loaders, "get_safetensors_tensor_shapes", header_shapes)
    return snapshot


def test_the_catalogue_is_the_one_the_claim_counts(catalogue):
    got = Counter(release for release, _, _ in catalogue)
    assert dict(got) == EXPECTED, (f"sae-lens {sae_lens.__version__} lists other 27b-it Gemma Scope 2 entries: "
                                   "update the README's count")
    assert sum(got.values()) == TOTAL
    assert len({(r, s) for r, s, _ in catalogue}) == TOTAL  # no entry counted twice
    for release, sae_id, folder in catalogue:  # each maps through release_sae to its folder, read as Gemma Scope 2
        found = release_sae(release, sae_id)
        got = (found["repo_id"], found["folder"], found["format"], found["converter"])
        assert got == (REPO, folder, "gemma_scope", "gemma_3"), (release, sae_id, got)
        assert found["norm_scaling_factor"] is None and found["config_overrides"] == {}
        assert 0 <= _layer(folder) < N_LAYERS and _kind(folder)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_27b_it_artifact_is_read_where_saelens_says(tmp_path, monkeypatch, catalogue, l0s, variant):
    from sae_lens.loading.pretrained_sae_loaders import get_gemma_3_config_from_hf

    import causal_kl.routes.sae as route

    _hub(tmp_path, monkeypatch, catalogue, l0s, variant)
    seen_files = []  # what route_points read of each SAE's files (architecture, widths): kept, not read a second time
    read_files = route.read_sae_files

    def keep(*args, **kwargs):
        seen_files.append(read_files(*args, **kwargs))
        return seen_files[-1]

    monkeypatch.setattr(route, "read_sae_files", keep)
    read, refused, wrong = Counter(), {}, []
    for release, sae_id, folder in catalogue:
        seen_files.clear()
        kind, layer, affine = _kind(folder), _layer(folder), folder.endswith("_affine")
        transcoder = kind == "transcoder"
        entry = {"kind": "sae", "release": release, "sae_id": sae_id}
        label = f"{release}/{sae_id}"
        try:
            points = route_points(entry, "gs2", layer, MODEL, "config.yaml")
            [files] = seen_files
        except CausalKLError as e:
            refused[label] = e.problem
            continue
        read[release] += 1
        theirs = get_gemma_3_config_from_hf(REPO, folder, device="cpu")
        their_points = (tl_hook(theirs["hook_name"]), tl_hook(theirs.get("hook_name_out", theirs["hook_name"])))
        want_points = tuple(Point(layer, h) for h in POINTS[kind])
        want_arch = ("jumprelu_skip_transcoder" if affine else "jumprelu_transcoder") if transcoder else "jumprelu"
        got = (points, files.architecture, files.d_in, files.d_sae, files.d_out)
        want = (want_points, want_arch, _widths(kind), _d_sae(folder), _widths(kind))
        saelens = (their_points, theirs["architecture"], theirs["d_in"], theirs["d_sae"],
                   theirs.get("d_out", theirs["d_in"]))
        if not got == want == saelens:
            wrong.append((label, got, want, saelens))
    assert refused == REFUSED, f"{len(refused)} not read, e.g. {next(iter(refused.items()), None)}"
    assert wrong == [], f"{len(wrong)} read at other points than SAELens', e.g. {wrong[:3]}"
    assert dict(read) == {r: n - sum(k.startswith(r + "/") for k in REFUSED) for r, n in EXPECTED.items()}
    assert sum(read.values()) == TOTAL - len(REFUSED)


def test_our_reconstruction_is_saelens_own_on_one_folder_per_release_and_kind(tmp_path, monkeypatch, catalogue, l0s):
    """One folder per release and kind (affine or not), loaded by SAELens' gemma_3 loader into its own module: our
    route's reconstruction is its forward (a skip transcoder's skip term included)."""
    import torch
    from sae_lens.loading.pretrained_sae_loaders import gemma_3_sae_huggingface_loader

    classes = {"jumprelu": sae_lens.JumpReLUSAE, "jumprelu_transcoder": sae_lens.JumpReLUTranscoder,
               "jumprelu_skip_transcoder": sae_lens.JumpReLUSkipTranscoder}
    picked = {}
    for release, sae_id, folder in catalogue:
        picked.setdefault((release, folder.endswith("_affine")), (release, sae_id, folder))
    assert len(picked) == 10  # 6 SAE releases + 2 transcoder releases x (affine or not)
    _hub(tmp_path, monkeypatch, list(picked.values()), l0s, "published")
    seen = defaultdict(set)
    for release, sae_id, folder in picked.values():
        cfg, state, _ = gemma_3_sae_huggingface_loader(REPO, folder, device="cpu")
        theirs = classes[cfg["architecture"]].from_dict(cfg)
        theirs.load_state_dict(state)
        theirs.eval()
        x = np.random.default_rng(_layer(folder)).normal(size=(32, cfg["d_in"])).astype(np.float32)
        with torch.no_grad():
            want = theirs(torch.from_numpy(x)).numpy()
        entry = {"kind": "sae", "release": release, "sae_id": sae_id}
        recon, stats = reconstruct(entry, _layer(folder), x, model_config=MODEL)
        np.testing.assert_allclose(recon, want, rtol=1e-5, atol=1e-5, err_msg=f"{release}/{sae_id}")
        assert stats["architecture"] == cfg["architecture"]
        seen[_kind(folder)].add(cfg["architecture"])
    assert seen == {"resid_post": {"jumprelu"}, "attn_out": {"jumprelu"}, "mlp_out": {"jumprelu"},
                    "transcoder": {"jumprelu_transcoder", "jumprelu_skip_transcoder"}}
