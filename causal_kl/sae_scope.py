"""More of SAELens' catalogue formats: Llama Scope (and its R1-distill series), mwhanna's Qwen3 transcoders, Gemma
Scope's gemma-2 transcoders, and Connor & Rob's GPT-2 ``hook_z`` SAEs; cross-layer transcoders refused.

Each format is read as SAELens' loader reads it (``sae_lens/loading/pretrained_sae_loaders.py``, sae-lens 6.54), by
``release`` + ``sae_id`` (``causal_kl.sae_hub``), by ``repo`` + ``folder`` and by ``path``:

``llama_scope`` (``fnlp/Llama3_1-8B-Base-LX{R,A,M}-{8,32}x``)
    a folder ``Llama3_1-8B-Base-L{L}{R,A,M}-{8,32}x`` holding ``hyperparams.json`` (``d_model``, ``d_sae``,
    ``hook_point_in``/``hook_point_out``, a scalar ``jump_relu_threshold``, ``dataset_average_activation_norm``
    ``{in, out}``) and ``checkpoints/final.safetensors`` (``encoder.weight [d_sae, d_in]``, ``encoder.bias``,
    ``decoder.weight [d_in, d_sae]``, ``decoder.bias``). JumpReLU, ``apply_b_dec_to_input`` false, the hook is
    ``hook_point_in`` (``blocks.L.hook_resid_post`` / ``hook_attn_out`` / ``hook_mlp_out``). The SAE saw its input
    times ``f = sqrt(d_in) / dataset_average_activation_norm.in``; SAELens sets every latent's threshold to
    ``jump_relu_threshold * f`` (SAELens PR #483, by Llama Scope's authors: without it the L0s are far too large)
    and folds ``f`` into the weights (``W_enc * f``, ``W_dec / f``, ``b_dec / f``,
    ``fold_activation_norm_scaling_factor``) with the factor its catalogue lists (``norm_scaling_factor``); so does
    this, with the file's own ``f`` where no catalogue entry names the SAE.
``llama_scope_r1_distill`` (``fnlp/Llama-Scope-R1-Distill``)
    a folder holding ``config.json`` (``d_model``, ``expansion_factor``, ``hook_point_in``) and
    ``sae_weights.safetensors`` (the tensors above, with ``log_jumprelu_threshold``: the threshold is its exp);
    JumpReLU, no ``b_dec`` on the input, the catalogue's ``norm_scaling_factor`` folded in as above (the threshold
    as it is). Without a catalogue entry the factor comes from ``dataset_average_activation_norm.in`` in
    ``config.json`` when it has one, else the SAE is refused in one line.
``mwhanna_transcoder`` (``mwhanna/qwen3-*-transcoders*``)
    ``layer_{L}.safetensors`` at the repo's root (``W_enc [d_sae, d_in]``, transposed on reading, ``b_enc``,
    ``W_dec [d_sae, d_out]``, ``b_dec``) beside ``wandb-config.yaml`` (or its misspelling ``wanb-config.yaml``;
    ``d_model``, ``d_feature``); a ReLU ``transcoder`` from ``blocks.L.mlp.hook_in`` (the MLP's normalised input) to
    ``blocks.L.hook_mlp_out``, the layer from the file's name.
``gemma_2_transcoder`` (``google/gemma-scope-2b-pt-transcoders``)
    Gemma Scope's ``params.npz`` (read by ``causal_kl.sae.load_gemma_scope``): a ``jumprelu_transcoder`` from
    ``blocks.L.ln2.hook_normalized`` (= ``hook_mlp_in``) to ``blocks.L.hook_mlp_out``; ``sae_format.gemma_scope_hooks``
    tells it by a ``...-transcoders`` repo or folder above it.
``connor_rob_hook_z`` (``ckkissane/attn-saes-gpt2-small-all-layers``)
    ``<name>.pt`` (a pickled state dict ``W_enc [d_in, d_sae]``, ``b_enc``, ``W_dec [d_sae, d_in]``, ``b_dec``) beside
    ``<name>_cfg.json`` (``act_size``, ``dict_size``, ``act_name`` = ``blocks.L.attn.hook_z``): a ReLU SAE with
    ``apply_b_dec_to_input``, SAELens' ``reshape_activations: hook_z`` (the heads' outputs, concatenated). The pickle
    is read only by ``torch.load(weights_only=True)``; one that needs more is refused in one line. At parse time its
    tensors' shapes are read without torch by an unpickler that knows only tensors and ordered dicts.

Cross-layer transcoders (``mntss_clt_layer_transcoder``; Gemma Scope 2's ``clt`` folders) are refused at parse time:
a CLT's layer-L latents write to the MLP output of layer L and of every later layer, so replacing one site with it
is not what it computes (SAELens' mntss loader sums the decoders into one and warns that it is for feature
activations, not reconstruction); causal-kl splices at one site.

``catalogue_sites(info, entry)``: what one catalogue entry of any of these formats reads and writes, from the
catalogue alone (for a coverage count). Torch-free at import (the parse-time check reads it).
"""

from __future__ import annotations

import math
import pickle
import re
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from causal_kl.errors import CausalKLError
from causal_kl.io import read_json
from causal_kl import sae_format as fmt

LLAMA_SCOPE_CFG = "hyperparams.json"
LLAMA_SCOPE_WEIGHTS = "checkpoints/final.safetensors"
R1_CFG = "config.json"
R1_WEIGHTS = fmt.SAELENS_WEIGHTS  # SAELens' SAE_WEIGHTS_FILENAME, as its loader names it
MWHANNA_CFGS = ("wandb-config.yaml", "wanb-config.yaml")  # the second: a typo some of the repos have
MWHANNA_BASE_CFG = "config.yaml"
CONNOR_CFG_SUFFIX = "_cfg.json"

FORMATS = ("llama_scope", "llama_scope_r1_distill", "mwhanna_transcoder", "connor_rob_hook_z")
"""The formats this module reads (``causal_kl.sae_format.locate_sae`` names them)."""
FILE_FORMATS = ("mwhanna_transcoder", "connor_rob_hook_z")
"""Formats whose SAE is one file of a folder holding many (one per layer): its path is the file."""

CONVERTERS = {"llama_scope": "llama_scope", "llama_scope_r1_distill": "llama_scope_r1_distill",
              "mwhanna_transcoder": "mwhanna_transcoder", "connor_rob_hook_z": "connor_rob_hook_z",
              "gemma_2_transcoder": "gemma_scope"}
"""SAELens' ``conversion_func`` -> the format read here (for ``causal_kl.sae_hub.CONVERTERS``)."""

FORMAT_FILES = {"llama_scope": (LLAMA_SCOPE_CFG, LLAMA_SCOPE_WEIGHTS), "llama_scope_r1_distill": (R1_CFG, R1_WEIGHTS),
                "gemma_2_transcoder": (fmt.GEMMA_SCOPE_NPZ,)}
"""The files of a folder format's SAE (for ``causal_kl.sae_hub.FORMAT_FILES``); the file formats' are per SAE."""

CLT_CONVERTERS = ("mntss_clt_layer_transcoder",)
CLT_REASON = ("a cross-layer transcoder (CLT): its layer-L latents write to the MLP outputs of layer L and every later "
              "layer, so it reconstructs no single site, and causal-kl splices at one site")
CLT_FIX = "use a per-layer transcoder or SAE (e.g. SAELens' gemma-scope-2b-pt-transcoders for gemma-2-2b)"


# ------------------------------------------------------------------------------------ the catalogue
def is_clt_folder(folder: str) -> bool:
    """Gemma Scope 2's cross-layer transcoder folders (``clt/...``, ``clt_*``)."""
    return any(q.lower() == "clt" or q.lower().startswith("clt_") for q in PurePosixPath(str(folder)).parts)


def refusal(info: dict, entry: dict) -> str | None:
    """Why causal-kl refuses a catalogue entry of these formats at parse time (None: it does not): a cross-layer
    transcoder, by its ``conversion_func`` or a ``clt`` folder."""
    if info.get("conversion_func") in CLT_CONVERTERS or is_clt_folder(str(entry.get("path", ""))):
        return CLT_REASON
    return None


def check_release(release: str, info: dict, entry: dict, source: str, field: str) -> None:
    """The one-line refusal of a catalogue entry (``refusal``), for ``causal_kl.sae_hub.release_sae``."""
    why = refusal(info, entry)
    if why is not None:
        raise CausalKLError(source, field, f"release '{release}' SAE '{entry.get('id')}' is {why}", CLT_FIX)


_LLAMA_SCOPE_KIND = {"r": "hook_resid_post", "a": "hook_attn_out", "m": "hook_mlp_out"}


def catalogue_sites(info: dict, entry: dict) -> dict[str, Any] | None:
    """From one catalogue entry alone (``info``: the release's dict in ``pretrained_saes.yaml``, ``entry``: one of its
    ``saes``): ``{"format", "conversion_func", "hook_in", "hook_out", "refused"}`` (SAELens' hook names; ``hook_out`` equals ``hook_in``
    for an SAE; ``refused``: the reason, or None), or None for a format this module does not cover. The hooks are
    what SAELens' loader will say, told by the id or path the catalogue gives (``l3r_8x`` = ``blocks.3.hook_resid_post``;
    ``layer_3`` of mwhanna = ``blocks.3.mlp.hook_in`` -> ``blocks.3.hook_mlp_out``)."""
    conv = info.get("conversion_func")
    sae_id, path = str(entry.get("id", "")), str(entry.get("path", ""))
    why = refusal(info, entry)
    if conv in CLT_CONVERTERS:
        return {"format": None, "conversion_func": conv, "hook_in": None, "hook_out": None, "refused": why}
    hook_in = hook_out = None
    if conv in ("llama_scope", "llama_scope_r1_distill"):
        m = re.search(r"(?:^|/)L(\d+)([RAM])(?:-|$)", path) or re.match(r"^l(\d+)([ram])_", sae_id)
        if m:
            hook_in = hook_out = f"blocks.{int(m.group(1))}.{_LLAMA_SCOPE_KIND[m.group(2).lower()]}"
    elif conv == "mwhanna_transcoder":
        if m := re.search(r"(\d+)$", path.removesuffix(".safetensors")):
            hook_in, hook_out = f"blocks.{m.group(1)}.mlp.hook_in", f"blocks.{m.group(1)}.hook_mlp_out"
    elif conv == "gemma_2_transcoder":
        if m := re.search(r"layer_(\d+)", path) or re.search(r"layer_(\d+)", str(info.get("repo_id", ""))):
            hook_in, hook_out = f"blocks.{m.group(1)}.ln2.hook_normalized", f"blocks.{m.group(1)}.hook_mlp_out"
    elif conv == "connor_rob_hook_z":
        if m := re.search(r"_L(\d+)_", path) or re.match(r"^blocks\.(\d+)\.", sae_id):
            hook_in = hook_out = f"blocks.{m.group(1)}.attn.hook_z"
    else:
        return None
    return {"format": CONVERTERS[conv], "conversion_func": conv, "hook_in": hook_in, "hook_out": hook_out,
            "refused": why}


# ------------------------------------------------------------------------------------ the hub cache
def is_file_sae(folder: str) -> bool:
    """Whether a catalogue path or a ``repo`` + ``folder`` names one file of a file format (mwhanna's
    ``layer_3.safetensors``, a hook_z ``....pt``)."""
    name = PurePosixPath(str(folder)).name
    return name.endswith(".pt") or bool(re.fullmatch(r"layer_\d+\.safetensors", name))


def claims_file(repo_id: str, folder: str, revision: str | None) -> bool:
    """Whether a ``repo`` + ``folder`` naming one file is one of these formats: mwhanna's ``layer_L.safetensors``, or
    a ``.pt`` with Connor & Rob's ``<name>_cfg.json`` cached beside it (another ``.pt``, a Qwen-Scope
    ``layer3.sae.pt`` or a Goodfire state dict, is ``causal_kl.sae_dictionary``'s)."""
    from causal_kl.sae_hub import _cached

    if not is_file_sae(folder):
        return False
    p = PurePosixPath(str(folder))
    if file_format(p.name) != "connor_rob_hook_z":
        return True
    parent = "" if str(p.parent) == "." else str(p.parent)
    return _cached(repo_id, parent, p.name.split(".pt")[0] + CONNOR_CFG_SUFFIX, revision or None) is not None


def file_format(name: str) -> str:
    return "connor_rob_hook_z" if str(name).endswith(".pt") else "mwhanna_transcoder"


def find_file(repo_id: str, path: str, revision: str | None, source: str, field: str, label: str,
              norm_scaling_factor: float | None = None, config_overrides: dict | None = None):
    """A file-format SAE (``path``: its file in the repo) found in the cache with its config: mwhanna's
    ``wandb-config.yaml`` or ``wanb-config.yaml`` (whichever is cached) and ``config.yaml`` when cached, beside it;
    Connor & Rob's ``<name>_cfg.json``. Missing ones are the one line with the ``hf download`` command."""
    from causal_kl.sae_hub import _cached

    p = PurePosixPath(str(path))
    folder, name = ("" if str(p.parent) == "." else str(p.parent)), p.name
    format_name = file_format(name)
    if format_name == "connor_rob_hook_z":
        files: tuple[str, ...] = (name, name.split(".pt")[0] + CONNOR_CFG_SUFFIX)
    else:
        cfg = next((c for c in MWHANNA_CFGS if _cached(repo_id, folder, c, revision or None) is not None), MWHANNA_CFGS[0])
        base = (MWHANNA_BASE_CFG,) if _cached(repo_id, folder, MWHANNA_BASE_CFG, revision or None) is not None else ()
        files = (name, cfg, *base)
    return find_in_cache(repo_id, folder, revision, files, format_name, source, field, label, norm_scaling_factor,
                         config_overrides)


def find_in_cache(repo_id: str, folder: str, revision: str | None, files: tuple[str, ...], format_name: str,
                  source: str, field: str, label: str, norm_scaling_factor: float | None = None,
                  config_overrides: dict | None = None):
    """``causal_kl.sae_hub.find_in_cache`` for these formats, named by ``format_name`` (the files alone do not tell a
    one-file format): the ``HubSAE``'s path is the folder, or the SAE's file (the first of ``files``)."""
    from causal_kl import sae_hub as hub

    return hub.find_in_cache(repo_id, folder, revision, files, source, field, label, norm_scaling_factor,
                             config_overrides, format_name=format_name)


# ------------------------------------------------------------------------------------ the files
def locate(p: Path) -> tuple[str, Path] | None:
    """``(format, path)`` when ``p`` is an SAE of these formats (a folder for the Llama Scope ones, the file for the
    others), else None (``causal_kl.sae_format.locate_sae`` asks first). A folder of mwhanna transcoders (one file
    per layer) is a one-line error naming a file to give."""
    if _MNTSS_CLT.fullmatch(p.name) or (p.is_dir() and any(_MNTSS_CLT.fullmatch(q.name) for q in p.glob("W_enc_*"))):
        raise CausalKLError(p, "architecture", CLT_REASON, CLT_FIX)  # mntss' CLT files: W_enc_L / W_dec_L.safetensors
    if p.is_file():
        if p.name == LLAMA_SCOPE_CFG and (p.parent / LLAMA_SCOPE_WEIGHTS).exists():
            return "llama_scope", p.parent
        if p.name == "final.safetensors" and p.parent.name == "checkpoints" and (p.parent.parent / LLAMA_SCOPE_CFG).exists():
            return "llama_scope", p.parent.parent
        if p.name in (R1_CFG, R1_WEIGHTS) and _is_r1_folder(p.parent):
            return "llama_scope_r1_distill", p.parent
        if _MWHANNA_FILE.fullmatch(p.name) and any((p.parent / c).exists() for c in MWHANNA_CFGS):
            return "mwhanna_transcoder", p
        if p.suffix == ".pt" and _connor_cfg(p).exists():
            return "connor_rob_hook_z", p
        if p.name.endswith(CONNOR_CFG_SUFFIX) and (pt := p.with_name(p.name[: -len(CONNOR_CFG_SUFFIX)] + ".pt")).exists():
            return "connor_rob_hook_z", pt
        return None
    if not p.is_dir():
        return None
    if (p / LLAMA_SCOPE_CFG).exists():
        return "llama_scope", p
    if _is_r1_folder(p):
        return "llama_scope_r1_distill", p
    layers = sorted(q.name for q in p.glob("*.safetensors") if _MWHANNA_FILE.fullmatch(q.name))
    if layers and any((p / c).exists() for c in MWHANNA_CFGS):
        shown = ", ".join(layers[:3]) + (", ..." if len(layers) > 3 else "")
        raise CausalKLError(p, "sae path", f"a folder of mwhanna transcoders, one file per layer ({shown})",
                            f"point the route at one layer's file, e.g. '{p / 'layer_{layer}.safetensors'}'")
    return None


_MNTSS_CLT = re.compile(r"W_(?:enc|dec)_\d+\.safetensors")
_MWHANNA_FILE = re.compile(r".+_\d+\.safetensors")
"""An mwhanna transcoder's file: SAELens' loader takes the layer from the name's last ``_`` part (``layer_3``)."""


def _is_r1_folder(p: Path) -> bool:
    """Llama Scope R1's folder: ``config.json`` naming ``hook_point_in`` + ``sae_weights.safetensors``, no ``cfg.json``."""
    if not ((p / R1_CFG).exists() and (p / R1_WEIGHTS).exists()) or (p / fmt.SAELENS_CFG).exists():
        return False
    try:
        return "hook_point_in" in read_json(p / R1_CFG, fmt.SAE_CONFIG_FIX)
    except CausalKLError:
        return False


def _connor_cfg(pt: Path) -> Path:
    return pt.with_name(pt.name.split(".pt")[0] + CONNOR_CFG_SUFFIX)


def _get(cfg: dict, key: str, file: Path, fix: str) -> Any:
    if cfg.get(key) is None:
        raise CausalKLError(file, key, "missing", fix)
    return cfg[key]


def _yaml_value(cfg: dict, key: str, file: Path) -> Any:
    """A wandb config's ``{key: {value: ...}}`` (or a bare ``key: ...``)."""
    v = _get(cfg, key, file, "mwhanna's wandb-config.yaml states d_model and d_feature")
    return v.get("value") if isinstance(v, dict) else v


def _positive_int(value: Any, file: Path, field: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1 or n != value:
        raise CausalKLError(file, field, f"{value!r} is not a positive integer", f"fix {field} in {Path(file).name}")
    return n


def read_config(format_name: str, path: Path, norm_scaling_factor: float | None = None) -> dict[str, Any]:
    """What an SAE of these formats' config says, torch-free: ``cfg_file``, ``weights``, ``architecture``, ``d_in``,
    ``d_sae``, ``d_out``, ``hook_name``, ``hook_name_out``, ``hook_z``, ``apply_b_dec_to_input``, ``names`` (file tensor
    name -> SAELens' name, transposed or not), ``threshold`` (Llama Scope's scalar, already times ``f``), ``fold``
    (the factor folded into the weights, None for none) and ``model_name``."""
    if format_name in ("llama_scope", "llama_scope_r1_distill"):
        llama = format_name == "llama_scope"
        cfg_file, weights = (path / LLAMA_SCOPE_CFG, path / LLAMA_SCOPE_WEIGHTS) if llama else (path / R1_CFG, path / R1_WEIGHTS)
        for f in (cfg_file, weights):
            if not f.exists():
                raise CausalKLError(f, f.name, "not found", f"a {'Llama Scope' if llama else 'Llama Scope R1'} SAE folder holds "
                                    f"{cfg_file.relative_to(path)} and {weights.relative_to(path)}")
        cfg = read_json(cfg_file, fmt.SAE_CONFIG_FIX)
        fix = f"{cfg_file.name} of a Llama Scope SAE states d_model, hook_point_in and {'d_sae' if llama else 'expansion_factor'}"
        d_in = _positive_int(_get(cfg, "d_model", cfg_file, fix), cfg_file, "d_model")
        d_sae = (_positive_int(_get(cfg, "d_sae", cfg_file, fix), cfg_file, "d_sae") if llama
                 else d_in * _positive_int(_get(cfg, "expansion_factor", cfg_file, fix), cfg_file, "expansion_factor"))
        hook = str(_get(cfg, "hook_point_in", cfg_file, fix))
        out = cfg.get("hook_point_out")
        if out is not None and str(out) != hook:
            raise CausalKLError(cfg_file, "hook_point_out", f"{out} differs from hook_point_in {hook}: a Llama Scope "
                                "transcoder, which SAELens' loader does not read", "use a Llama Scope SAE (LXR, LXA, LXM)")
        averages = cfg.get("dataset_average_activation_norm")
        norm = averages.get("in") if isinstance(averages, dict) else None
        own = None
        if norm is not None:
            if not (isinstance(norm, (int, float)) and math.isfinite(norm) and norm > 0):
                raise CausalKLError(cfg_file, "dataset_average_activation_norm.in", f"{norm!r} is not a positive number",
                                    "download the SAE's config again")
            own = d_in ** 0.5 / float(norm)
        if llama and own is None:
            raise CausalKLError(cfg_file, "dataset_average_activation_norm.in", "missing: a Llama Scope SAE's input is "
                                "scaled by sqrt(d_model) / its dataset-average norm", "download hyperparams.json again")
        fold = norm_scaling_factor if norm_scaling_factor is not None else own
        if fold is None:
            raise CausalKLError(cfg_file, "dataset_average_activation_norm", "a Llama Scope R1 SAE's input is scaled by "
                                "sqrt(d_model) / a dataset-average norm that this config.json does not state",
                                "name the SAE by its SAELens release + sae_id (pretrained_saes.yaml lists the factor)")
        threshold = None
        if llama:
            t = _get(cfg, "jump_relu_threshold", cfg_file, "hyperparams.json of a Llama Scope SAE states jump_relu_threshold")
            threshold = float(t) * own  # SAELens: jump_relu_threshold * sqrt(d_in) / dataset_average_activation_norm.in
        names = {"encoder.weight": ("W_enc", True), "encoder.bias": ("b_enc", False),
                 "decoder.weight": ("W_dec", True), "decoder.bias": ("b_dec", False)}
        if not llama:
            names["log_jumprelu_threshold"] = ("log_threshold", False)
        return {"cfg_file": cfg_file, "weights": weights, "architecture": "jumprelu", "d_in": d_in, "d_sae": d_sae,
                "d_out": d_in, "hook_name": hook, "hook_name_out": None, "hook_z": False, "apply_b_dec_to_input": False,
                "names": names, "threshold": threshold, "fold": float(fold), "model_name": "meta-llama/Llama-3.1-8B"}
    if format_name == "mwhanna_transcoder":
        cfg_file = next((path.parent / c for c in MWHANNA_CFGS if (path.parent / c).exists()), path.parent / MWHANNA_CFGS[0])
        if not cfg_file.exists():
            raise CausalKLError(cfg_file, cfg_file.name, "not found", "an mwhanna transcoder file has wandb-config.yaml beside it")
        cfg = _read_yaml(cfg_file)
        d_in = _positive_int(_yaml_value(cfg, "d_model", cfg_file), cfg_file, "d_model")
        d_sae = _positive_int(_yaml_value(cfg, "d_feature", cfg_file), cfg_file, "d_feature")
        m = re.search(r"_(\d+)$", path.name.removesuffix(".safetensors"))
        if m is None:
            raise CausalKLError(path, "sae path", "an mwhanna transcoder's file is named layer_L.safetensors (the layer)",
                                "give the layer_L.safetensors file as the hub names it")
        base = path.parent / MWHANNA_BASE_CFG
        model = _read_yaml(base).get("model_name") if base.exists() else None
        layer = int(m.group(1))
        return {"cfg_file": cfg_file, "weights": path, "architecture": "transcoder", "d_in": d_in, "d_sae": d_sae,
                "d_out": d_in, "hook_name": f"blocks.{layer}.mlp.hook_in", "hook_name_out": f"blocks.{layer}.hook_mlp_out",
                "hook_z": False, "apply_b_dec_to_input": False,
                "names": {"W_enc": ("W_enc", True), "b_enc": ("b_enc", False), "W_dec": ("W_dec", False),
                          "b_dec": ("b_dec", False)}, "threshold": None, "fold": None, "model_name": model}
    if format_name == "connor_rob_hook_z":
        cfg_file = _connor_cfg(path)
        if not cfg_file.exists():
            raise CausalKLError(cfg_file, cfg_file.name, "not found", f"a hook_z SAE's .pt has <name>{CONNOR_CFG_SUFFIX} beside it")
        cfg = read_json(cfg_file, fmt.SAE_CONFIG_FIX)
        fix = "the SAE's _cfg.json states act_size, dict_size and act_name"
        hook = str(_get(cfg, "act_name", cfg_file, fix))
        site = fmt.parse_hook_name(hook)
        if site.point is None or site.point.hook != "attn_z":
            raise CausalKLError(cfg_file, "act_name", f"{hook} is not an attention hook_z (blocks.L.attn.hook_z)",
                                "use a hook_z SAE of this format, or convert the SAE to SAELens' format")
        return {"cfg_file": cfg_file, "weights": path, "architecture": "standard",
                "d_in": _positive_int(_get(cfg, "act_size", cfg_file, fix), cfg_file, "act_size"),
                "d_sae": _positive_int(_get(cfg, "dict_size", cfg_file, fix), cfg_file, "dict_size"),
                "d_out": None, "hook_name": hook, "hook_name_out": None, "hook_z": True, "apply_b_dec_to_input": True,
                "names": {k: (k, False) for k in ("W_enc", "b_enc", "W_dec", "b_dec")}, "threshold": None, "fold": None,
                "model_name": cfg.get("model_name")}
    raise ValueError(f"not a format of sae_scope: {format_name!r}")


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        obj = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise CausalKLError(path, None, f"not valid YAML ({str(e).splitlines()[0]})", "download the file again") from e
    if not isinstance(obj, dict):
        raise CausalKLError(path, None, "is not a YAML mapping", "download the file again")
    return obj


def _saelens_shapes(cfg: dict, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The file's tensor shapes under SAELens' names (transposed where the loader transposes), checked: every tensor
    the format has is there, no other (SAELens' strict state-dict load refuses one), and each fits the config."""
    file, names = cfg["weights"], cfg["names"]
    missing = [n for n in names if n not in shapes]
    extra = sorted(set(shapes) - set(names))
    if missing or extra:
        what = f"tensor(s) {', '.join(missing)} missing" if missing else f"unexpected tensor(s) {', '.join(extra)}"
        raise CausalKLError(file, (missing or extra)[0], f"{what} (has {', '.join(sorted(shapes)) or 'none'})",
                            f"this format's weights are exactly {', '.join(names)}; download the file again")
    out = {}
    for name, (ours, transpose) in names.items():
        out[ours] = tuple(reversed(shapes[name])) if transpose else tuple(shapes[name])
    if "log_threshold" in out:
        out["threshold"] = out.pop("log_threshold")
    d_in, d_sae = cfg["d_in"], cfg["d_sae"]
    d_out = cfg["d_out"] or d_in
    expected = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_out), "b_dec": (d_out,)}
    if "threshold" in out:
        expected["threshold"] = (d_sae,)
    for name, shape in expected.items():
        if out[name] != shape:
            file_name = next(k for k, (o, _) in names.items() if o == name or (o == "log_threshold" and name == "threshold"))
            raise CausalKLError(file, file_name, f"shape {shapes[file_name]} does not fit {cfg['cfg_file'].name} (d_in={d_in}, "
                                f"d_sae={d_sae}{f', d_out={d_out}' if cfg['d_out'] else ''}; SAELens reads it as {name} "
                                f"{shape})", "download the SAE's files again (the config and weights of one SAE)")
    return out


def read_files(format_name: str, path: Path, norm_scaling_factor: float | None = None) -> dict[str, Any]:
    """Parse time, torch-free: the config and the tensor headers checked as the loader checks them; returns the
    keyword arguments of ``causal_kl.routes.sae.SAEFiles``."""
    cfg = read_config(format_name, path, norm_scaling_factor)
    shapes = pt_shapes(cfg["weights"]) if format_name == "connor_rob_hook_z" else fmt.safetensors_shapes(cfg["weights"])
    _saelens_shapes(cfg, shapes)
    return {"file": cfg["cfg_file"], "architecture": cfg["architecture"], "d_in": cfg["d_in"], "d_sae": cfg["d_sae"],
            "d_out": cfg["d_out"] or cfg["d_in"], "hook_name": cfg["hook_name"], "hook_name_out": cfg["hook_name_out"],
            "hook_z": cfg["hook_z"]}


# ------------------------------------------------------------------------------------ pickles
class _Stub:
    """A tensor's shape, as a torch-free unpickler of a ``torch.save`` file rebuilds it."""

    def __init__(self, shape=()):
        self.shape = tuple(int(s) for s in shape)


def _rebuild_tensor(storage, offset, size, *args):  # torch._utils._rebuild_tensor_v2's arguments
    return _Stub(size)


class _ShapeUnpickler(pickle.Unpickler):
    """Unpickles ``data.pkl`` of a ``torch.save`` zip with tensors as their shapes; like ``weights_only`` it builds
    nothing but tensors, storages and plain containers (anything else is refused)."""

    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2") or (module, name) == ("torch._utils", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name.endswith("Storage"):
            return _Stub
        if (module, name) == ("collections", "OrderedDict"):
            import collections

            return collections.OrderedDict
        raise pickle.UnpicklingError(f"{module}.{name} is not a tensor or a plain container")

    def persistent_load(self, pid):
        return _Stub()


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER


def pt_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of a pickled state dict (``torch.save``'s zip), without torch and without reading the
    weights; a file that is no such state dict (or needs more than tensors to unpickle) is one line."""
    fix = "give a state dict saved with torch.save (tensors only), or convert the SAE to SAELens' format"
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                pkl = next((n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
                if pkl is None:
                    raise ValueError("no data.pkl inside")
                with z.open(pkl) as f:
                    obj = _ShapeUnpickler(f).load()
        else:  # torch.save's legacy format (before torch 1.6): magic number, protocol, sys info, then the object
            with open(path, "rb") as f:
                if _ShapeUnpickler(f).load() != _LEGACY_MAGIC:
                    raise ValueError("neither a zip nor torch's legacy format")
                _ShapeUnpickler(f).load(), _ShapeUnpickler(f).load()
                obj = _ShapeUnpickler(f).load()
    except (OSError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError, EOFError, AttributeError, TypeError) as e:
        raise CausalKLError(path, None, f"not a state dict torch.load(weights_only=True) reads "
                            f"({str(e).splitlines()[0] if str(e) else type(e).__name__})", fix) from e
    if not isinstance(obj, dict) or not all(isinstance(v, _Stub) for v in obj.values()):
        raise CausalKLError(path, None, "not a state dict of tensors", fix)
    return {str(k): v.shape for k, v in obj.items()}


def _torch_load(path: Path) -> dict:
    import torch

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - weights_only's refusal (UnpicklingError) or a broken file: one line
        raise CausalKLError(path, None, f"torch.load(weights_only=True) refuses it ({str(e).splitlines()[0][:200]})",
                            "give a state dict of tensors saved with torch.save, or convert the SAE to SAELens' format") from e
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CausalKLError(path, None, "not a state dict of tensors", "give a state dict saved with torch.save")
    return obj


# ------------------------------------------------------------------------------------ loading
def load(format_name: str, path: Path, norm_scaling_factor: float | None = None):
    """Read an SAE of these formats on the CPU as SAELens' loader reads it (the module docstring), a
    ``causal_kl.sae.SparseAutoencoder`` in float32 with the normalisation folded in."""
    import numpy as np
    import torch

    from causal_kl.sae import SparseAutoencoder, _read_safetensors

    cfg = read_config(format_name, path, norm_scaling_factor)
    if format_name == "connor_rob_hook_z":
        raw = {k: v.detach().to(torch.float32).numpy() for k, v in _torch_load(cfg["weights"]).items()}
    else:
        raw = _read_safetensors(cfg["weights"])
    _saelens_shapes(cfg, {k: tuple(np.shape(v)) for k, v in raw.items()})
    t = {ours: torch.from_numpy(np.ascontiguousarray(np.asarray(raw[name], dtype=np.float32).T if transpose
                                                     else np.asarray(raw[name], dtype=np.float32)))
         for name, (ours, transpose) in cfg["names"].items()}
    if "log_threshold" in t:
        t["threshold"] = t.pop("log_threshold").exp()
    if cfg["threshold"] is not None:
        t["threshold"] = torch.ones(cfg["d_sae"], dtype=torch.float32) * cfg["threshold"]
    f = cfg["fold"]
    if f is not None:  # SAELens' fold_activation_norm_scaling_factor
        t["W_enc"], t["W_dec"], t["b_dec"] = t["W_enc"] * f, t["W_dec"] / f, t["b_dec"] / f
    arch = cfg["architecture"]
    return SparseAutoencoder(
        W_enc=t["W_enc"], b_enc=t["b_enc"], W_dec=t["W_dec"], b_dec=t["b_dec"], threshold=t.get("threshold"),
        architecture=arch, apply_b_dec_to_input=cfg["apply_b_dec_to_input"], normalize_activations="none",
        hook_name=cfg["hook_name"], hook_name_out=cfg["hook_name_out"], hook_z=cfg["hook_z"], source=str(cfg["cfg_file"]),
        metadata={"format": format_name, "model_name": cfg["model_name"], "norm_scaling_factor_folded": f},
    )

