"""What an SAE's files say, read without torch: file names, ``cfg.json`` spellings, hooks and layers.

The one home of the SAE formats' rules (``causal_kl.sae``'s docstring describes them in full):
``causal_kl.sae`` builds and runs the SAE from them; the parse-time check of an ``sae`` route
(``causal_kl.routes.sae.check_sae_config``) applies the same rules to the same files before any
job runs, without importing torch, so both refuse a bad SAE with the same one-line error.

- ``locate_sae``: which format a path holds (a SAELens directory, a Gemma Scope ``params.npz``
  or a Gemma Scope 2 ``params.safetensors``, an EleutherAI sparsify folder).
- ``read_saelens_cfg``: a SAELens ``cfg.json`` of any supported version -> the settings.
- ``read_sparsify_cfg`` / ``sparsify_hook`` / ``check_sparsify_tensors``: sparsify's ``cfg.json``,
  the hookpoint its folder is named after, and its tensors (``encoder.weight`` ...).
- ``read_safetensors_header``: a safetensors file's header, its size checked against the header's
  data offsets (a truncated download is refused before any weight is read).
- ``gemma_scope_config`` / ``gemma_scope_hook``: Gemma Scope 2's ``config.json`` and the hook a
  Gemma Scope SAE was trained at (its config, else the repos' folder layout).
- ``parse_hook_name``: a hook name -> the design's layer (or none).
- ``check_required_tensors``: the tensors an architecture needs are there.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from causal_kl.errors import CausalKLError

ARCHITECTURES = ("standard", "jumprelu", "topk")
"""Architectures ``causal_kl.sae`` runs (SAELens' names)."""

NORMALIZATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")
"""SAELens' ``normalize_activations`` settings ``causal_kl.sae`` runs."""

SAELENS_CFG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
SAELENS_SCALER = "activation_scaler.json"
GEMMA_SCOPE_NPZ = "params.npz"
GEMMA_SCOPE_SAFETENSORS = "params.safetensors"
GEMMA_SCOPE_CONFIG = "config.json"
SPARSIFY_CFG = "cfg.json"
SPARSIFY_WEIGHTS = "sae.safetensors"
SPARSIFY_TENSORS = ("encoder.weight", "encoder.bias", "W_dec", "b_dec")
"""What sparsify's ``SparseCoder.save_to_disk`` writes (``encoder``: an ``nn.Linear(d_in, num_latents)``)."""
FORMATS = ("saelens", "gemma_scope", "sparsify")

ARCH_ALIASES = {"jump_relu": "jumprelu", "relu": "standard", "top_k": "topk"}
KNOWN_UNSUPPORTED = {
    "gated", "batchtopk", "matryoshka_batchtopk", "abstopk", "matching_pursuit", "temporal",
    "transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder",
}


# --------------------------------------------------------------------------------------- hooks
@dataclass(frozen=True)
class HookSite:
    """Where an SAE was trained, read from its hook name.

    ``layer`` is the design's layer (output of decoder block ``layer``), or None when the hook is
    not a decoder block's output (then the SAE cannot be spliced at any layer).
    """

    hook_name: str
    kind: str  # resid_post | resid_pre | embed | other
    layer: int | None

    def describe(self) -> str:
        if self.kind == "resid_pre" and self.layer is not None:
            return f"{self.hook_name} (the input of block {self.layer + 1} = layer {self.layer}, the output of block {self.layer})"
        if self.layer is not None:
            return f"{self.hook_name} (layer {self.layer}, the output of block {self.layer})"
        return f"{self.hook_name} (not the output of a decoder block)"


_RESID_POST = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")
_RESID_PRE = re.compile(r"^blocks\.(\d+)\.hook_resid_pre$")
_HF_LAYER_OUT = re.compile(r"^(?:(?:model|language_model|transformer|gpt_neox)\.)*(?:layers|h)\.(\d+)(?:\.output)?$")
_HF_MODULE = re.compile(r"^(?:(?:model|language_model|transformer|gpt_neox)\.)*(?:(?:layers|h)\.\d+\.[\w.]+|embed_tokens|embed_in|wte)$")


def parse_hook_name(hook_name: str) -> HookSite:
    """``blocks.L.hook_resid_post`` -> layer L; ``blocks.L.hook_resid_pre`` -> layer L - 1;
    ``model.layers.L.output`` / ``layers.L`` / ``h.L`` (a decoder block's module: its forward output,
    as Gemma Scope 2 and sparsify hook it) -> layer L (returned as ``blocks.L.hook_resid_post``);
    anything else -> ``layer=None``."""
    name = hook_name.strip()
    if m := _RESID_POST.match(name):
        return HookSite(name, "resid_post", int(m.group(1)))
    if m := _RESID_PRE.match(name):
        block = int(m.group(1))
        if block == 0:
            return HookSite(name, "embed", None)
        return HookSite(name, "resid_pre", block - 1)
    if m := _HF_LAYER_OUT.match(name):
        layer = int(m.group(1))
        return HookSite(resid_post_hook(layer), "resid_post", layer)
    if name in ("hook_embed", "embed.hook_embed", "embed_tokens", "embed_in", "wte"):
        return HookSite(name, "embed", None)
    return HookSite(name, "other", None)


def resid_post_hook(layer: int) -> str:
    """SAELens' name for the design's layer ``layer``: ``blocks.{layer}.hook_resid_post``."""
    return f"blocks.{int(layer)}.hook_resid_post"


# ------------------------------------------------------------------------------------ the files
def locate_sae(path: str | Path) -> tuple[str, Path]:
    """``(format, file)`` of an existing SAE path: ``("saelens", directory)``, ``("gemma_scope", weights file)``
    or ``("sparsify", directory)``.

    ``path`` is an SAE directory, its ``cfg.json`` / ``sae_weights.safetensors`` / ``sae.safetensors``, or
    a Gemma Scope ``params.npz`` / ``params.safetensors`` (or a directory holding one). A folder holding
    only ``cfg.json`` is SAELens' or sparsify's by the keys of that file (so the missing weights file is
    named right). A path that holds no SAE is a one-line error (a sparsify release folder, holding one
    folder per hookpoint, says which); a path that does not exist is the caller's to report (it knows the field).
    """
    p = Path(path)
    if p.is_file():
        if p.name == SAELENS_WEIGHTS:
            return "saelens", p.parent
        if p.name == SPARSIFY_WEIGHTS:
            return "sparsify", p.parent
        if p.name == SAELENS_CFG:
            return locate_sae(p.parent)
        if p.suffix == ".npz" or p.name == GEMMA_SCOPE_SAFETENSORS:
            return "gemma_scope", p
        raise CausalKLError(p, "sae path", "is not an SAE file",
                            f"give the SAE directory, its {SAELENS_WEIGHTS} or {SPARSIFY_WEIGHTS}, a Gemma Scope "
                            f"{GEMMA_SCOPE_NPZ} or {GEMMA_SCOPE_SAFETENSORS}")
    if (p / SAELENS_WEIGHTS).exists():
        return "saelens", p
    if (p / SPARSIFY_WEIGHTS).exists():
        return "sparsify", p
    if (p / SAELENS_CFG).exists():
        return ("sparsify" if _looks_like_sparsify_cfg(p / SAELENS_CFG) else "saelens"), p
    for name in (GEMMA_SCOPE_NPZ, GEMMA_SCOPE_SAFETENSORS):
        if (p / name).exists():
            return "gemma_scope", p / name
    hookpoints = sorted(q.name for q in p.iterdir() if (q / SPARSIFY_WEIGHTS).exists()) if p.is_dir() else []
    if hookpoints:
        shown = ", ".join(hookpoints[:4]) + (", ..." if len(hookpoints) > 4 else "")
        layered = re.sub(r"(?<=[.])\d+$", "{layer}", hookpoints[0])
        raise CausalKLError(p, SPARSIFY_WEIGHTS, f"a sparsify release: one SAE folder per hookpoint ({shown}), none here",
                            f"point the route at one hookpoint's folder, e.g. '{p / layered}'")
    raise CausalKLError(p, SAELENS_CFG, "no SAE found in this directory",
                        f"give a directory holding {SAELENS_CFG} + {SAELENS_WEIGHTS} (SAELens), {SPARSIFY_CFG} + "
                        f"{SPARSIFY_WEIGHTS} (sparsify) or {GEMMA_SCOPE_NPZ} (Gemma Scope)")


def _looks_like_sparsify_cfg(cfg_path: Path) -> bool:
    """sparsify's ``cfg.json`` (``SparseCoderConfig`` + ``d_in``) rather than SAELens': no SAELens key, a sparsify one."""
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(cfg, dict):
        return False
    saelens_keys = {"d_sae", "architecture", "hook_name", "hook_point", "metadata", "activation_fn_str", "activation_fn"}
    return not (saelens_keys & set(cfg)) and bool({"expansion_factor", "num_latents"} & set(cfg))


def saelens_files(folder: Path) -> tuple[Path, Path]:
    """``(cfg.json, sae_weights.safetensors)`` of a SAELens directory; either missing is a one-line error."""
    cfg_path, weights = folder / SAELENS_CFG, folder / SAELENS_WEIGHTS
    for f in (cfg_path, weights):
        if not f.exists():
            raise CausalKLError(f, f.name, "not found",
                                f"an SAELens SAE directory holds {SAELENS_CFG} and {SAELENS_WEIGHTS} (SAE.save_model writes both)")
    return cfg_path, weights


def read_json(path: Path) -> dict:
    """A JSON object from an SAE's config file, or a one-line error naming it."""
    try:
        obj = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise CausalKLError(path, None, f"not valid JSON ({e})", "re-save the SAE config") from e
    if not isinstance(obj, dict):
        raise CausalKLError(path, None, "is not a JSON object", "re-save the SAE config")
    return obj


def scaler_factor(folder: Path) -> float | None:
    """The ``scaling_factor`` in SAELens' ``activation_scaler.json`` beside ``cfg.json`` (None: no file, or null)."""
    scaler = folder / SAELENS_SCALER
    return read_json(scaler).get("scaling_factor") if scaler.exists() else None


def missing_scaler_error(cfg_path: Path, fix: str) -> CausalKLError:
    return CausalKLError(cfg_path, "normalize_activations",
                         f"expected_average_only_in, but no scaling factor ({SAELENS_SCALER} is missing or holds null)", fix)


# ----------------------------------------------------------------------------------- cfg.json
def cfg_get(cfg: dict, *keys: str, default: Any = None) -> Any:
    """First of ``keys`` found at the top level of ``cfg``, then under ``cfg['metadata']``."""
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    for where in (cfg, meta):
        for key in keys:
            if key in where and where[key] is not None:
                return where[key]
    return default


def _int(value: Any, name: str, file: str | Path) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError) as e:
        raise CausalKLError(file, name, f"{value!r} is not an integer", f"set {name} to an integer") from e


def read_saelens_cfg(cfg: dict, file: str | Path = SAELENS_CFG) -> dict[str, Any]:
    """Normalise a SAELens ``cfg.json`` of any supported version into ``causal_kl.sae``'s settings.

    Returns ``architecture``, ``d_in``, ``d_sae`` (None when absent), ``k``,
    ``rescale_acts_by_decoder_norm``, ``apply_b_dec_to_input``, ``normalize_activations``,
    ``hook_name``, ``hook_layer``, ``model_name``.
    """
    arch = cfg_get(cfg, "architecture")
    act_fn = cfg_get(cfg, "activation_fn", "activation_fn_str")
    act_kwargs = cfg_get(cfg, "activation_fn_kwargs", default={}) or {}
    arch = "standard" if arch is None else ARCH_ALIASES.get(str(arch).lower(), str(arch).lower())
    if act_fn == "topk" and arch == "standard":  # SAELens < 6 ran TopK as a standard SAE with activation_fn "topk"
        arch = "topk"
    if arch not in ARCHITECTURES:
        why = "is not supported here" if arch in KNOWN_UNSUPPORTED else "is unknown"
        raise CausalKLError(file, "architecture", f"SAE architecture {arch!r} {why}",
                            f"use a {', '.join(ARCHITECTURES)} SAE (a BatchTopK SAE is saved by SAELens as jumprelu)")
    if act_fn is not None and act_fn not in ("relu", "topk") and not (arch == "jumprelu" and act_fn == "jumprelu"):
        raise CausalKLError(file, "activation_fn", f"activation {act_fn!r} is not supported (SAELens >= 6 ignores it and runs ReLU)",
                            "use an SAE with activation_fn relu (or topk)")
    k = cfg_get(cfg, "k")
    if k is None and isinstance(act_kwargs, dict):
        k = act_kwargs.get("k")
    norm = cfg_get(cfg, "normalize_activations", default="none")
    if isinstance(norm, bool):  # SAELens < 6: True meant the April-2024 expected-average scaling
        norm = "expected_average_only_in" if norm else "none"
    if norm not in NORMALIZATIONS:
        raise CausalKLError(file, "normalize_activations", f"{norm!r} is not supported",
                            f"use an SAE with normalize_activations in {', '.join(NORMALIZATIONS)} (fold whitening into the weights first)")
    if cfg_get(cfg, "hook_head_index", "hook_point_head_index") is not None:
        raise CausalKLError(file, "hook_head_index", "a per-attention-head SAE cannot reconstruct the residual stream",
                            "use a residual-stream SAE (blocks.L.hook_resid_post)")
    if cfg_get(cfg, "reshape_activations", default="none") not in ("none", None):
        raise CausalKLError(file, "reshape_activations",
                            f"{cfg_get(cfg, 'reshape_activations')!r} (hook_z) SAEs read attention heads, not the residual stream",
                            "use a residual-stream SAE (blocks.L.hook_resid_post)")
    hook = cfg_get(cfg, "hook_name", "hook_point")
    hf_hook = cfg_get(cfg, "hf_hook_name", "hf_hook_point_in")
    if hook is None and hf_hook is not None:
        hook = parse_hook_name(str(hf_hook)).hook_name
    hook_layer = cfg_get(cfg, "hook_layer", "hook_point_layer")
    if hook is not None and hook_layer is not None:
        m = re.match(r"^blocks\.(\d+)\.", str(hook))
        if m and int(m.group(1)) != int(hook_layer):
            raise CausalKLError(file, "hook_layer", f"hook_layer {hook_layer} contradicts hook_name {hook}",
                                "fix cfg.json so hook_layer is the block index in hook_name")
    return {
        "architecture": arch,
        "d_in": _int(cfg_get(cfg, "d_in"), "d_in", file),
        "d_sae": _int(cfg_get(cfg, "d_sae"), "d_sae", file),
        "k": _int(k, "k", file),
        "rescale_acts_by_decoder_norm": bool(cfg_get(cfg, "rescale_acts_by_decoder_norm", default=False)),
        "apply_b_dec_to_input": bool(cfg_get(cfg, "apply_b_dec_to_input", default=True)),
        "normalize_activations": norm,
        "hook_name": None if hook is None else str(hook),
        "hook_layer": _int(hook_layer, "hook_layer", file),
        "model_name": cfg_get(cfg, "model_name"),
    }


# ---------------------------------------------------------------------------------- Gemma Scope
def gemma_scope_config(weights: Path) -> dict:
    """Gemma Scope 2's ``config.json`` beside ``weights`` ({} when there is none); a transcoder or
    a non-JumpReLU SAE is a one-line error."""
    path = Path(weights).parent / GEMMA_SCOPE_CONFIG
    if not path.exists():
        return {}
    raw = read_json(path)
    arch = str(raw.get("architecture", "jump_relu")).lower()
    if ARCH_ALIASES.get(arch, arch) != "jumprelu" or "hf_hook_point_out" in raw or "affine_connection" in raw:
        raise CausalKLError(path, "architecture",
                            f"not a residual JumpReLU SAE ({arch}{', a transcoder' if 'hf_hook_point_out' in raw else ''})",
                            "use a Gemma Scope resid_post SAE")
    return raw


def gemma_scope_hook(raw_cfg: dict, weights: Path) -> str | None:
    """The hook a Gemma Scope SAE was trained at: Gemma Scope 2's ``hf_hook_point_in``
    (``model.layers.L.output`` = layer L), else the repos' folder layout, else unknown (None)."""
    if raw_cfg.get("hf_hook_point_in"):
        return parse_hook_name(str(raw_cfg["hf_hook_point_in"])).hook_name
    return gemma_scope_hook_from_path(Path(weights).parent)


def gemma_scope_hook_from_path(folder: Path) -> str | None:
    """Gemma Scope repos' folder layout -> hook: ``.../gemma-scope-9b-pt-res/layer_20/...`` or
    ``.../resid_post/layer_41_width_16k_l0_medium/`` -> ``blocks.L.hook_resid_post``; ``.../embedding/...`` ->
    ``hook_embed`` (no layer: refused unless check_hook is false)."""
    parts = [q.lower() for q in Path(folder).resolve().parts]
    layer = None
    for q in parts:
        if m := re.match(r"^layer_(\d+)(?:_|$)", q):
            layer = int(m.group(1))
    if layer is None:  # Gemma Scope's embedding SAEs (.../gemma-scope-2b-pt-res/embedding/...) read the embeddings
        return "hook_embed" if "embedding" in parts else None
    if any(q in ("resid_post", "resid_post_all") or re.search(r"[-_]res$", q) for q in parts):
        return resid_post_hook(layer)
    if any(q in ("mlp_out", "mlp_out_all") or re.search(r"[-_]mlp$", q) for q in parts):
        return f"blocks.{layer}.hook_mlp_out"
    if any(q in ("attn_out", "attn_out_all") or re.search(r"[-_]att$", q) for q in parts):
        return f"blocks.{layer}.attn.hook_z"
    return None


def gemma_scope_names(names: dict) -> dict:
    """Gemma Scope's lower-case ``w_enc``/``w_dec`` as SAELens' ``W_enc``/``W_dec`` (keys of a tensor or shape dict)."""
    return {("W_" + k[2:] if k.startswith("w_") else k): v for k, v in names.items()}


# ------------------------------------------------------------------------------------- sparsify
SPARSIFY_DEFAULTS = {"activation": "topk", "expansion_factor": 32, "num_latents": 0, "k": 32,
                     "skip_connection": False, "transcode": False, "signed": False}
"""``SparseCoderConfig``'s defaults (sparsify/config.py, eai-sparsify 1.3.3; ``signed``: the older ``sae`` library's)."""


def read_sparsify_cfg(cfg: dict, file: str | Path, folder: str | Path) -> dict[str, Any]:
    """An EleutherAI sparsify ``cfg.json`` (``SparseCoderConfig.to_dict()`` + ``d_in``) -> ``causal_kl.sae``'s settings.

    sparsify's ``SparseCoder`` (sparsify/sparse_coder.py) encodes ``top_k(relu((x - b_dec) @ encoder.weight.T +
    encoder.bias))`` and decodes ``acts @ W_dec + b_dec``: SAELens' TopK with ``apply_b_dec_to_input``, no
    normalisation. ``num_latents`` 0 means ``d_in * expansion_factor``. Refused: ``activation: groupmax``,
    transcoders (``transcode``), skip connections and the old ``signed`` coders. The hook is the folder's name
    (``sparsify_hook``). Returns the keys of ``read_saelens_cfg``.
    """
    cfg = {**SPARSIFY_DEFAULTS, **cfg}
    d_in = _int(cfg.get("d_in"), "d_in", file)
    if d_in is None or d_in < 1:
        raise CausalKLError(file, "d_in", f"got {cfg.get('d_in')!r}", "sparsify's cfg.json states d_in (SparseCoder.save_to_disk writes it)")
    if cfg["activation"] != "topk":
        raise CausalKLError(file, "activation", f"sparsify activation {cfg['activation']!r} is not supported",
                            "use a sparsify SAE trained with activation topk (the default)")
    if cfg["transcode"]:
        raise CausalKLError(file, "transcode", "a transcoder predicts a module's output from its input: it does not "
                            "reconstruct the residual stream", "use a sparsify SAE (transcode false)")
    if cfg["skip_connection"]:
        raise CausalKLError(file, "skip_connection", "sparsify coders with a skip connection (W_skip) are not supported",
                            "use a sparsify SAE without skip_connection")
    if cfg["signed"]:
        raise CausalKLError(file, "signed", "signed TopK coders (the old sae library) are not supported",
                            "use a sparsify SAE with signed false")
    num_latents = _int(cfg["num_latents"], "num_latents", file) or d_in * _int(cfg["expansion_factor"], "expansion_factor", file)
    return {
        "architecture": "topk",
        "d_in": d_in,
        "d_sae": num_latents,
        "k": _int(cfg["k"], "k", file),
        "rescale_acts_by_decoder_norm": False,
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "hook_name": sparsify_hook(folder),
        "hook_layer": None,
        "model_name": None,
    }


def sparsify_hook(folder: str | Path) -> str | None:
    """The hookpoint a sparsify SAE was trained at: its folder's name (sparsify's trainer saves each coder under
    ``{save_dir}/{run}/{hookpoint}``, ``/seedN`` below it when several seeds are trained; hub releases keep those
    folders). Hookpoints are module names under the model's ``base_model``: ``layers.L`` (Llama, Pythia/GPT-NeoX,
    Gemma, Qwen, Mistral) or ``h.L`` (GPT-2) is decoder block L's forward output = layer L
    (``blocks.L.hook_resid_post``); ``layers.L.mlp`` and the like are other modules' outputs. A folder name that
    is no module name (a folder the user renamed) says nothing: None."""
    folder = Path(folder)
    name = folder.parent.name if re.fullmatch(r"seed\d+", folder.name) else folder.name
    site = parse_hook_name(name)
    if site.layer is not None or site.kind == "embed" or _HF_MODULE.match(name):
        return site.hook_name
    return None


def sparsify_names(tensors: dict, transpose=lambda v: tuple(reversed(v))) -> dict:
    """The first sparsify release layout (the ``sae`` library before 2024-06-08: ``W_enc [d_in, d_sae]``, ``b_enc``)
    under today's names (``encoder.weight [d_sae, d_in]``, ``encoder.bias``), as SAELens' sparsify loader also reads
    it; ``transpose`` turns a ``W_enc`` value (a shape by default, an array for the loader) into ``encoder.weight``'s."""
    out = dict(tensors)
    if "encoder.weight" not in out and "W_enc" in out:
        out["encoder.weight"] = transpose(out.pop("W_enc"))
    if "encoder.bias" not in out and "b_enc" in out:
        out["encoder.bias"] = out.pop("b_enc")
    return out


def check_sparsify_tensors(shapes: dict[str, tuple[int, ...]], cfg: dict[str, Any], file: Path, cfg_file: Path) -> None:
    """sparsify's tensors (names and shapes from ``sae.safetensors``) fit its ``cfg.json`` (``read_sparsify_cfg``):
    ``encoder.weight [num_latents, d_in]``, ``encoder.bias [num_latents]``, ``W_dec [num_latents, d_in]``,
    ``b_dec [d_in]``, and ``1 <= k <= num_latents``; else the one-line error naming the first that does not."""
    missing = [n for n in SPARSIFY_TENSORS if n not in shapes]
    if missing:
        raise CausalKLError(file, missing[0], f"tensor(s) {', '.join(missing)} missing (has {', '.join(sorted(shapes)) or 'none'})",
                            f"a sparsify SAE holds {', '.join(SPARSIFY_TENSORS)} (a coder saved without its decoder "
                            "cannot reconstruct); re-save it with SparseCoder.save_to_disk")
    d_in, n = cfg["d_in"], cfg["d_sae"]
    expected = {"encoder.weight": (n, d_in), "encoder.bias": (n,), "W_dec": (n, d_in), "b_dec": (d_in,)}
    for name, shape in expected.items():
        if tuple(shapes[name]) != shape:
            raise CausalKLError(file, name, f"shape {tuple(shapes[name])} does not fit cfg.json d_in={d_in}, "
                                f"num_latents={n} (expected {shape})", "re-save the SAE with sparsify (SparseCoder.save_to_disk)")
    k = cfg["k"]
    if k is None or not 1 <= k <= n:
        raise CausalKLError(cfg_file, "k", f"a TopK SAE needs 1 <= k <= num_latents={n}, got {k!r}", "set k in cfg.json")


# ----------------------------------------------------------------------------- safetensors files
SAFETENSORS_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8,
                           "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def read_safetensors_header(path: str | Path) -> dict[str, dict]:
    """The header of a safetensors file (8-byte little-endian length, then JSON), no weights read, checked against
    the file: every tensor's ``data_offsets`` span its dtype x shape, and the file is exactly the header plus the
    data the offsets name (safetensors refuses any other size). A truncated copy or download is one line here,
    at parse time, instead of a failure in the first job that reads the weights."""
    path = Path(path)
    fix = "re-save the SAE weights with safetensors"
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise ValueError("file shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > 100_000_000 or n > size - 8:
                raise ValueError(f"header length {n} does not fit the file")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        end = 0
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, stop = (int(o) for o in info["data_offsets"])
            shape = [int(s) for s in info["shape"]]
            width = SAFETENSORS_DTYPE_BYTES.get(str(info.get("dtype")))
            if stop < start or (width is not None and stop - start != width * math.prod(shape)):
                raise ValueError(f"tensor {name}: data_offsets {[start, stop]} do not hold {info.get('dtype')} {shape}")
            end = max(end, stop)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CausalKLError(path, None, f"not a readable safetensors file ({str(e).splitlines()[0]})", fix) from e
    expected = 8 + n + end
    if size < expected:
        raise CausalKLError(path, None, f"truncated: its header's tensors end at byte {expected:,} but the file has "
                            f"{size:,} bytes ({expected - size:,} missing)",
                            "copy or download the file again (a transfer that stopped early leaves it cut short)")
    if size > expected:
        raise CausalKLError(path, None, f"{size - expected:,} bytes past the end of its header's last tensor "
                            f"(the file has {size:,} bytes, the header names {expected:,})",
                            "copy or download the file again (safetensors refuses a file of any other size)")
    return header


def safetensors_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """``{tensor name: shape}`` from a safetensors file's checked header (``read_safetensors_header``); no weights read."""
    return {k: tuple(int(s) for s in v["shape"]) for k, v in read_safetensors_header(path).items() if k != "__metadata__"}


# ------------------------------------------------------------------------------------- tensors
def required_tensors(arch: str) -> list[str]:
    return ["W_enc", "b_enc", "W_dec", "b_dec"] + (["threshold"] if arch == "jumprelu" else [])


def check_required_tensors(names: Iterable[str], arch: str, file: Path, gemma_scope: bool = False) -> None:
    """Every tensor an ``arch`` SAE needs is among ``names``; else a one-line error naming the first missing."""
    names = set(names)
    required = required_tensors(arch)
    missing = [n for n in required if n not in names]
    if missing:
        needs = f"a Gemma Scope SAE file holds {', '.join(required)}" if gemma_scope else f"a {arch} SAE needs {', '.join(required)}"
        raise CausalKLError(file, missing[0], f"tensor(s) {', '.join(missing)} missing (has {', '.join(sorted(names)) or 'none'})",
                            needs)
