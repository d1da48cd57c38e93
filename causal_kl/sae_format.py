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
- ``safetensors_shapes``: a safetensors file's tensor shapes from its header, the file's size checked against
  the header's data offsets (``causal_kl.checkpoints.read_safetensors_header``: a truncated download is refused
  before any weight is read).
- ``gemma_scope_config`` / ``gemma_scope_hooks``: Gemma Scope 2's ``config.json`` and the hook a
  Gemma Scope SAE was trained at (its config, else the repos' folder layout).
- ``parse_hook_name``: a hook name -> the design's layer (or none).
- ``check_required_tensors``: the tensors an architecture needs are there.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from causal_kl.checkpoints import read_safetensors_header
from causal_kl.errors import CausalKLError
from causal_kl.families import BLOCK_PATH, EMBED_TOKENS, FAMILIES
from causal_kl.io import read_json
from causal_kl import hooks as H

TRANSCODERS = {"transcoder": "standard", "skip_transcoder": "standard", "jumprelu_transcoder": "jumprelu",
               "jumprelu_skip_transcoder": "jumprelu"}
"""SAELens' transcoder architectures -> the activation of their encoder (``sae_lens/saes/transcoder.py``)."""

ARCHITECTURES = ("standard", "jumprelu", "topk", "gated", *TRANSCODERS)
"""Architectures ``causal_kl.sae`` runs (SAELens' names)."""


def base_architecture(arch: str) -> str:
    """The encoder's activation of an architecture: a transcoder's ``standard``/``jumprelu``, else itself."""
    return TRANSCODERS.get(arch, arch)


def is_transcoder(arch: str) -> bool:
    return arch in TRANSCODERS


def has_skip(arch: str) -> bool:
    """A skip transcoder: ``W_skip [d_out, d_in]`` adds ``x @ W_skip.T`` of the raw input to the output."""
    return arch in ("skip_transcoder", "jumprelu_skip_transcoder")

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
FORMATS = ("saelens", "gemma_scope", "sparsify", "dictionary_learning", "qwen_scope", "goodfire", "deepseek_r1",
           "llama_scope", "llama_scope_r1_distill", "mwhanna_transcoder", "connor_rob_hook_z")
"""After the first three: ``causal_kl.sae_dictionary``'s four (SAELens' ``dictionary_learning_1``, ``qwen_scope``,
``goodfire`` and ``deepseek_r1`` conversions), then ``causal_kl.sae_scope``'s four."""

ARCH_ALIASES = {"jump_relu": "jumprelu", "relu": "standard", "top_k": "topk"}
KNOWN_UNSUPPORTED = {"batchtopk", "matryoshka_batchtopk", "abstopk", "matching_pursuit", "temporal"}


# --------------------------------------------------------------------------------------- hooks
@dataclass(frozen=True)
class HookSite:
    """Where an SAE was trained, read from its hook name.

    ``point`` is the (block, hook) it reads (``causal_kl.hooks.Point``), or None when the name is no hook inside a
    block we know (the embeddings, a module path no family has there). ``layer`` is the design's layer when the
    point is a block's output (``resid_post``), else None; ``kind`` is ``resid_post``, ``resid_pre``, one of the
    sub-layer hooks (``mlp_out`` ...), ``embed`` or ``other``.
    """

    hook_name: str
    kind: str
    layer: int | None
    point: H.Point | None = None

    def describe(self) -> str:
        if self.kind == "resid_pre" and self.layer is not None:
            return f"{self.hook_name} (the input of block {self.layer + 1} = layer {self.layer}, the output of block {self.layer})"
        if self.layer is not None:
            return f"{self.hook_name} (layer {self.layer}, the output of block {self.layer})"
        if self.point is not None:
            return (f"{self.hook_name} ({H.DESCRIPTIONS[self.point.hook]} of block {self.point.layer}, "
                    f"not the output of a decoder block)")
        return f"{self.hook_name} (not the output of a decoder block)"


_RESID_POST = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")
_RESID_PRE = re.compile(r"^blocks\.(\d+)\.hook_resid_pre$")
_HF_LAYER_OUT = re.compile(rf"^{BLOCK_PATH}(?:\.output)?$")  # a block's output by its module path, in any family
_EMBED = ("hook_embed", "embed.hook_embed", *EMBED_TOKENS)


def hf_point(hf_name: str, family_hooks=None) -> H.Point | None:
    """A transformers module path -> its point, by one family's table (``families.Family.hooks``), or without a family
    by every family's that has the module (None when they disagree or none has it). ``<norm>.output`` of a norm that
    feeds the MLP is ``mlp.input`` (``causal_kl.hooks.FEEDS_MLP``)."""
    tables = [family_hooks] if family_hooks is not None else [f.hooks for f in FAMILIES]
    found = set()
    for table in tables:
        point = H.hf_hook(hf_name, table)
        if point is not None:
            found.add(point)
    return found.pop() if len(found) == 1 else None


def parse_hook_name(hook_name: str, family_hooks=None) -> HookSite:
    """A hook name -> where it is. SAELens/TransformerLens names by ``causal_kl.hooks.tl_hook``
    (``blocks.L.hook_resid_post`` -> layer L; ``blocks.L.hook_resid_pre`` -> layer L - 1; ``blocks.L.hook_mlp_out``,
    ``blocks.L.attn.hook_z`` ... -> that hook of block L); transformers module paths (Gemma Scope 2's
    ``hf_hook_point_in``, sparsify's hookpoints): ``model.layers.L.output`` / ``layers.L`` / ``h.L`` (a block's
    forward output) -> layer L, returned as ``blocks.L.hook_resid_post``, and a module inside a block by the
    family's table (``hf_point``), returned by its SAELens name; anything else -> ``point=None``."""
    name = hook_name.strip()
    if m := _RESID_POST.match(name):
        return HookSite(name, "resid_post", int(m.group(1)), H.Point(int(m.group(1))))
    if m := _RESID_PRE.match(name):
        block = int(m.group(1))
        if block == 0:
            return HookSite(name, "embed", None)
        return HookSite(name, "resid_pre", block - 1, H.Point(block - 1))
    if point := H.tl_hook(name):
        return HookSite(name, point.hook, point.layer if point.hook == H.RESID_POST else None, point)
    if m := _HF_LAYER_OUT.match(name):
        layer = int(m.group(1))
        return HookSite(resid_post_hook(layer), "resid_post", layer, H.Point(layer))
    if name in _EMBED:
        return HookSite(name, "embed", None)
    if point := hf_point(name, family_hooks):
        return HookSite(point.saelens_name(), point.hook, point.layer if point.hook == H.RESID_POST else None, point)
    return HookSite(name, "other", None)


def resid_post_hook(layer: int) -> str:
    """SAELens' name for the design's layer ``layer``: ``blocks.{layer}.hook_resid_post``."""
    return f"blocks.{int(layer)}.hook_resid_post"


# ------------------------------------------------------------------------------------ the files
def locate_sae(path: str | Path) -> tuple[str, Path]:
    """``(format, file)`` of an existing SAE path: ``("saelens", directory)``, ``("gemma_scope", weights file)``
    or ``("sparsify", directory)``.

    ``path`` is an SAE directory, its ``cfg.json`` / ``sae_weights.safetensors`` / ``sae.safetensors``, or
    a Gemma Scope ``params.npz`` / ``params.safetensors`` (or a directory holding one), or a format of
    ``causal_kl.sae_dictionary`` (a dictionary_learning folder or its ``ae.pt``, a Qwen-Scope, Goodfire or DeepSeek-R1
    ``.pt``/``.pth``: ``(format, folder or file)``). A folder holding
    only ``cfg.json`` is SAELens' or sparsify's by the keys of that file (so the missing weights file is
    named right). A path that holds no SAE is a one-line error (a sparsify release folder, holding one
    folder per hookpoint, says which); a path that does not exist is the caller's to report (it knows the field).
    """
    p = Path(path)
    from causal_kl import sae_scope  # Llama Scope, mwhanna's transcoders, hook_z .pt files: their files first

    if (scoped := sae_scope.locate(p)) is not None:
        return scoped
    if p.is_file():
        if p.name == SAELENS_WEIGHTS:
            return "saelens", p.parent
        if p.name == SPARSIFY_WEIGHTS:
            return "sparsify", p.parent
        if p.name == SAELENS_CFG:
            return locate_sae(p.parent)
        if p.suffix == ".npz" or p.name == GEMMA_SCOPE_SAFETENSORS:
            return "gemma_scope", p
        if (other := _dictionary_locate(p)) is not None:
            return other
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
    if (other := _dictionary_locate(p)) is not None:
        return other
    hookpoints = sorted(q.name for q in p.iterdir() if (q / SPARSIFY_WEIGHTS).exists()) if p.is_dir() else []
    if hookpoints:
        shown = ", ".join(hookpoints[:4]) + (", ..." if len(hookpoints) > 4 else "")
        layered = re.sub(r"(?<=[.])\d+$", "{layer}", hookpoints[0])
        raise CausalKLError(p, SPARSIFY_WEIGHTS, f"a sparsify release: one SAE folder per hookpoint ({shown}), none here",
                            f"point the route at one hookpoint's folder, e.g. '{p / layered}'")
    raise CausalKLError(p, SAELENS_CFG, "no SAE found in this directory",
                        f"give a directory holding {SAELENS_CFG} + {SAELENS_WEIGHTS} (SAELens), {SPARSIFY_CFG} + "
                        f"{SPARSIFY_WEIGHTS} (sparsify), {GEMMA_SCOPE_NPZ} (Gemma Scope) or config.json + ae.pt "
                        "(dictionary_learning), or give an SAE's .pt file")


def _dictionary_locate(p: Path) -> tuple[str, Path] | None:
    """dictionary_learning, Qwen-Scope, Goodfire and DeepSeek-R1 files (``causal_kl.sae_dictionary.locate``)."""
    from causal_kl import sae_dictionary

    return sae_dictionary.locate(p)


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


SAE_CONFIG_FIX = "re-save the SAE config"
"""The fix of an unreadable SAE config's error line (``causal_kl.io.read_json``)."""


def scaler_factor(folder: Path) -> float | None:
    """The ``scaling_factor`` in SAELens' ``activation_scaler.json`` beside ``cfg.json`` (None: no file, or null)."""
    scaler = folder / SAELENS_SCALER
    return read_json(scaler, SAE_CONFIG_FIX).get("scaling_factor") if scaler.exists() else None


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

    Returns ``architecture``, ``d_in``, ``d_sae``, ``d_out`` (None when absent), ``k``,
    ``rescale_acts_by_decoder_norm``, ``apply_b_dec_to_input``, ``normalize_activations``,
    ``hook_name``, ``hook_name_out`` (transcoders), ``hf_hook_name``/``hf_hook_name_out`` (the transformers module
    path, kept only when the hook is read from it: no SAELens name given), ``hook_z`` (SAELens'
    ``reshape_activations: hook_z``), ``hook_layer``, ``model_name``.
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
    base = base_architecture(arch)
    if act_fn is not None and act_fn not in ("relu", "topk") and not (base == "jumprelu" and act_fn == "jumprelu"):
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
    apply_b_dec = bool(cfg_get(cfg, "apply_b_dec_to_input", default=not is_transcoder(arch)))
    if is_transcoder(arch):
        # SAELens' Transcoder normalises its input but never undoes it on the output (another hook's width), and
        # refuses apply_b_dec_to_input (TranscoderConfig.__post_init__): only the plain transcoder is read here
        if norm != "none":
            raise CausalKLError(file, "normalize_activations", f"a transcoder with normalize_activations {norm!r} is not supported "
                                "(SAELens normalises its input and leaves its output, at another hook, as it is)",
                                "fold the normalisation into the weights and save the transcoder with normalize_activations none")
        if apply_b_dec:
            raise CausalKLError(file, "apply_b_dec_to_input", "a transcoder cannot subtract b_dec (of the output's width) "
                                "from its input (SAELens refuses it too)", "set apply_b_dec_to_input: false")
    if cfg_get(cfg, "hook_head_index", "hook_point_head_index") is not None:
        raise CausalKLError(file, "hook_head_index", "a per-attention-head SAE reads one head, not a hook of the block",
                            "use an SAE of all heads (blocks.L.attn.hook_z) or of another hook")
    reshape = cfg_get(cfg, "reshape_activations", default="none")
    if reshape not in ("none", "hook_z"):
        raise CausalKLError(file, "reshape_activations", f"{reshape!r} is not supported",
                            "use an SAE with reshape_activations none or hook_z")
    hook = cfg_get(cfg, "hook_name", "hook_point")
    hf_hook = cfg_get(cfg, "hf_hook_name", "hf_hook_point_in")
    hook_out = cfg_get(cfg, "hook_name_out")
    hf_hook_out = cfg_get(cfg, "hf_hook_name_out", "hf_hook_point_out")
    hf_in = None if hook is not None else hf_hook  # the module path is the hook only where SAELens' name is missing
    hf_out = None if hook_out is not None else hf_hook_out
    if hook is None and hf_hook is not None:
        hook = parse_hook_name(str(hf_hook)).hook_name
    if hook_out is None and hf_hook_out is not None:
        hook_out = parse_hook_name(str(hf_hook_out)).hook_name
    hook_z = reshape == "hook_z"
    if hook_z and hook is not None and (site := parse_hook_name(str(hook))).point is not None and site.point.hook != "attn_z":
        raise CausalKLError(file, "reshape_activations", f"hook_z (attention heads) but hook_name is {hook}",
                            "fix cfg.json: a hook_z SAE reads blocks.L.attn.hook_z")
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
        "d_out": _int(cfg_get(cfg, "d_out"), "d_out", file) if is_transcoder(arch) else None,
        "k": _int(k, "k", file),
        "rescale_acts_by_decoder_norm": bool(cfg_get(cfg, "rescale_acts_by_decoder_norm", default=False)),
        "apply_b_dec_to_input": apply_b_dec,
        "normalize_activations": norm,
        "hook_name": None if hook is None else str(hook),
        "hook_name_out": None if hook_out is None or not is_transcoder(arch) else str(hook_out),
        "hf_hook_name": None if hf_in is None else str(hf_in),
        "hf_hook_name_out": None if hf_out is None or not is_transcoder(arch) else str(hf_out),
        "hook_z": hook_z,
        "hook_layer": _int(hook_layer, "hook_layer", file),
        "model_name": cfg_get(cfg, "model_name"),
    }


# ---------------------------------------------------------------------------------- Gemma Scope
def gemma_scope_config(weights: Path) -> dict:
    """Gemma Scope 2's ``config.json`` beside ``weights`` ({} when there is none); an architecture other than JumpReLU
    (SAELens' gemma_3 loader reads only ``jump_relu``, SAEs and transcoders alike) is a one-line error."""
    path = Path(weights).parent / GEMMA_SCOPE_CONFIG
    if not path.exists():
        return {}
    raw = read_json(path, SAE_CONFIG_FIX)
    arch = str(raw.get("architecture", "jump_relu")).lower()
    if ARCH_ALIASES.get(arch, arch) != "jumprelu":
        raise CausalKLError(path, "architecture", f"not a JumpReLU SAE or transcoder ({arch})",
                            "use a Gemma Scope SAE or transcoder (architecture jump_relu)")
    return raw


GEMMA_SCOPE_SKIP = "affine_skip_connection"
"""Gemma Scope 2's skip term of an affine transcoder, stored ``[d_in, d_out]`` (SAELens' ``W_skip`` is its transpose)."""


@dataclass(frozen=True)
class GemmaScopeHooks:
    """What a Gemma Scope SAE or transcoder reads and writes (``gemma_scope_hooks``)."""

    hook_name: str | None  # SAELens' name (or the module path, when no family has it)
    hook_name_out: str | None  # transcoders only
    hf_hook_name: str | None  # config.json's hf_hook_point_in, when the hook is read from it
    hf_hook_name_out: str | None
    transcoder: bool
    affine: bool  # config.json's affine_connection (a skip transcoder)


def gemma_scope_hooks(raw_cfg: dict, weights: Path) -> GemmaScopeHooks:
    """Where a Gemma Scope SAE or transcoder was trained: Gemma Scope 2's ``config.json`` (``hf_hook_point_in`` and,
    for a transcoder, ``hf_hook_point_out``: ``model.layers.L.output`` = layer L, ``...self_attn.o_proj.input`` =
    ``attn.hook_z``, ``...post_feedforward_layernorm.output`` = ``hook_mlp_out``, ``...pre_feedforward_layernorm.output``
    = ``hook_mlp_in``), else the repos' folder layout (``gemma_scope_hook_from_path``). A transcoder is a
    ``transcoder`` folder, or a config of ``type`` transcoder, or one whose ``hf_hook_point_out`` differs from its
    ``hf_hook_point_in`` or whose ``affine_connection`` is true (the published SAEs' configs name an ``hf_hook_point_out``
    equal to their input, ``affine_connection: false`` and ``type: sae``); cross-layer transcoders (``clt``) are refused."""
    folder = Path(weights).parent
    parts = [q.lower() for q in folder.resolve().parts]
    if any(q == "clt" or q.startswith("clt_") for q in parts):
        from causal_kl.sae_scope import CLT_REASON

        raise CausalKLError(weights, "architecture", CLT_REASON,
                            "use a Gemma Scope transcoder (transcoder/ or transcoder_all/ folders) or SAE")
    in_path, out_path = gemma_scope_hook_from_path(folder), None
    hf_in, hf_out = raw_cfg.get("hf_hook_point_in"), raw_cfg.get("hf_hook_point_out")
    transcoder = (any(q.startswith("transcoder") or re.search(r"[-_]transcoders$", q) for q in parts)  # -transcoders:
                  # Gemma Scope's gemma-2 transcoders repo (SAELens' gemma_2_transcoder)
                  or str(raw_cfg.get("type", "")).lower() == "transcoder"
                  or bool(hf_out and hf_out != hf_in) or bool(raw_cfg.get("affine_connection")))
    if transcoder and in_path is not None:
        in_path, out_path = gemma_scope_transcoder_hooks(folder)
    hook_in = parse_hook_name(str(hf_in)).hook_name if hf_in else in_path
    hook_out = parse_hook_name(str(hf_out)).hook_name if hf_out else out_path
    affine = bool(raw_cfg.get("affine_connection", any(q.endswith("_affine") for q in parts[-1:])))
    return GemmaScopeHooks(hook_in, hook_out if transcoder else None, str(hf_in) if hf_in else None,
                           str(hf_out) if hf_out and transcoder else None, transcoder, affine and transcoder)


def _gemma_scope_layer(folder: Path) -> int | None:
    layer = None
    for q in Path(folder).resolve().parts:
        if m := re.match(r"^layer_(\d+)(?:_|$)", q.lower()):
            layer = int(m.group(1))
    return layer


def gemma_scope_transcoder_hooks(folder: Path) -> tuple[str | None, str | None]:
    """A Gemma Scope 2 ``transcoder`` folder's hooks, as SAELens' gemma_3 loader names them: ``blocks.L.hook_mlp_in``
    -> ``blocks.L.hook_mlp_out``."""
    layer = _gemma_scope_layer(folder)
    return (None, None) if layer is None else (f"blocks.{layer}.hook_mlp_in", f"blocks.{layer}.hook_mlp_out")


def gemma_scope_hook_from_path(folder: Path) -> str | None:
    """Gemma Scope repos' folder layout -> hook: ``.../gemma-scope-9b-pt-res/layer_20/...`` or
    ``.../resid_post/layer_41_width_16k_l0_medium/`` -> ``blocks.L.hook_resid_post``; ``-mlp`` repos and
    ``mlp_out`` folders -> ``blocks.L.hook_mlp_out``; ``-att`` repos and ``attn_out`` folders ->
    ``blocks.L.attn.hook_z`` (Gemma Scope's attention SAEs read the heads' outputs, ``o_proj``'s input, as SAELens'
    gemma_2 and gemma_3 loaders say); ``transcoder`` folders -> ``blocks.L.hook_mlp_in`` (their input);
    ``.../embedding/...`` -> ``hook_embed`` (no layer: refused)."""
    parts = [q.lower() for q in Path(folder).resolve().parts]
    layer = _gemma_scope_layer(folder)
    if layer is None:  # Gemma Scope's embedding SAEs (.../gemma-scope-2b-pt-res/embedding/...) read the embeddings
        return "hook_embed" if "embedding" in parts else None
    if any(q.startswith("transcoder") or re.search(r"[-_]transcoders$", q) for q in parts):
        return f"blocks.{layer}.hook_mlp_in"
    if any(q in ("resid_post", "resid_post_all") or re.search(r"[-_]res$", q) for q in parts):
        return resid_post_hook(layer)
    if any(q in ("mlp_out", "mlp_out_all") or re.search(r"[-_]mlp$", q) for q in parts):
        return f"blocks.{layer}.hook_mlp_out"
    if any(q in ("attn_out", "attn_out_all") or re.search(r"[-_]att$", q) for q in parts):
        return f"blocks.{layer}.attn.hook_z"
    return None


def gemma_scope_architecture(where: GemmaScopeHooks, names, file: Path) -> str:
    """SAELens' architecture for a Gemma Scope file: ``jumprelu``, or for a transcoder ``jumprelu_transcoder`` /
    ``jumprelu_skip_transcoder`` (``affine_connection``, or the skip tensor present); an affine transcoder without
    its skip tensor is a one-line error."""
    if not where.transcoder:
        return "jumprelu"
    skip = GEMMA_SCOPE_SKIP in names
    if where.affine and not skip:
        raise CausalKLError(file, GEMMA_SCOPE_SKIP, "missing: config.json says affine_connection but the file has no skip term",
                            "download the transcoder's params.safetensors again")
    return "jumprelu_skip_transcoder" if skip else "jumprelu_transcoder"


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
        "hook_name_out": None,
        "hf_hook_name": sparsify_hookpoint(folder) if sparsify_hook(folder) is not None else None,
        "hf_hook_name_out": None,
        "d_out": None,
        "hook_z": False,
        "hook_layer": None,
        "model_name": None,
    }


def sparsify_hook(folder: str | Path) -> str | None:
    """The hookpoint a sparsify SAE was trained at: its folder's name (sparsify's trainer saves each coder under
    ``{save_dir}/{run}/{hookpoint}``, ``/seedN`` below it when several seeds are trained; hub releases keep those
    folders). Hookpoints are module names under the model's ``base_model``: ``layers.L`` (Llama, Pythia/GPT-NeoX,
    Gemma, Qwen, Mistral) or ``h.L`` (GPT-2) is decoder block L's forward output = layer L
    (``blocks.L.hook_resid_post``); ``layers.L.mlp`` and the like are other modules' outputs, read by the families'
    tables (``hf_point``: ``layers.L.mlp`` is ``blocks.L.hook_mlp_out`` in every family whose MLP output joins the
    residual stream as it is, not Gemma's); a module name no family knows is returned as it is (refused where the
    hook is checked). A folder name that is no module name (a folder the user renamed) says nothing: None."""
    name = sparsify_hookpoint(folder)
    site = parse_hook_name(name)
    if site.point is not None or site.kind == "embed" or H.is_module_path(name):
        return site.hook_name
    return None


def sparsify_hookpoint(folder: str | Path) -> str:
    """The module name a sparsify folder is named after (``layers.3.mlp``), its ``seedN`` level skipped."""
    folder = Path(folder)
    return folder.parent.name if re.fullmatch(r"seed\d+", folder.name) else folder.name


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
SAE_WEIGHTS_FIX = "re-save the SAE weights with safetensors"
"""The fix of an unreadable SAE safetensors file's error line (``checkpoints.read_safetensors_header``)."""


def safetensors_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """``{tensor name: shape}`` from a safetensors file's checked header (``checkpoints.read_safetensors_header``);
    no weights read."""
    return {k: tuple(int(s) for s in v["shape"])
            for k, v in read_safetensors_header(path, SAE_WEIGHTS_FIX).items() if k != "__metadata__"}


# ------------------------------------------------------------------------------------- tensors
GATED_TENSORS = ("b_gate", "b_mag", "r_mag")
"""SAELens' ``gated`` SAE's own tensors, each ``[d_sae]``, in place of ``b_enc`` (``sae_lens/saes/gated_sae.py``)."""


def required_tensors(arch: str) -> list[str]:
    if arch == "gated":
        return ["W_enc", *GATED_TENSORS, "W_dec", "b_dec"]
    return (["W_enc", "b_enc", "W_dec", "b_dec"] + (["threshold"] if base_architecture(arch) == "jumprelu" else [])
            + (["W_skip"] if has_skip(arch) else []))


def check_required_tensors(names: Iterable[str], arch: str, file: Path, gemma_scope: bool = False) -> None:
    """Every tensor an ``arch`` SAE needs is among ``names``; else a one-line error naming the first missing."""
    names = set(names)
    required = required_tensors(arch)
    missing = [n for n in required if n not in names]
    if missing:
        needs = f"a Gemma Scope SAE file holds {', '.join(required)}" if gemma_scope else f"a {arch} SAE needs {', '.join(required)}"
        raise CausalKLError(file, missing[0], f"tensor(s) {', '.join(missing)} missing (has {', '.join(sorted(names)) or 'none'})",
                            needs)


# ------------------------------------------------------------------------------ where it splices
def model_widths(model_config: dict) -> tuple[int | None, int | None]:
    """``(d_model, heads x head_dim)`` of a model's config.json (its ``text_config`` where it has one; GPT-2's
    ``n_embd``/``n_head``); ``head_dim`` defaults to ``hidden_size // num_attention_heads``."""
    cfg = model_config.get("text_config") if isinstance(model_config.get("text_config"), dict) else model_config
    d = cfg.get("hidden_size", cfg.get("n_embd"))
    heads = cfg.get("num_attention_heads", cfg.get("n_head"))
    if d is None or heads is None:
        return (None if d is None else int(d)), None
    head_dim = cfg.get("head_dim") or int(d) // int(heads)
    return int(d), int(heads) * int(head_dim)


def _text_config(model_config: dict) -> dict:
    text = model_config.get("text_config")
    return text if isinstance(text, dict) else model_config


def sae_points(file: str | Path, *, d_in: int, d_out: int, hook_name: str | None, hook_name_out: str | None = None,
               hf_hook_name: str | None = None, hf_hook_name_out: str | None = None, transcoder: bool = False,
               hook_z: bool = False, layer: int, check_hook: bool = True, route_hook: str | None = None,
               d_model: int | None = None, model_config: dict | None = None, model: str = "the model",
               model_file: str | Path | None = None, check_hook_fix: str | None = None) -> tuple[H.Point, H.Point]:
    """Where an SAE (or transcoder) is read and spliced when a route uses it at ``layer``: ``(point_in, point_out)``
    (the same point for an SAE), or the one-line error. The parse-time check and the loader both call it.

    The SAE's hooks are its files' (``hf_hook_name`` when the hook was read from a module path: then the model's
    family reads it); an SAE whose files name no hook is used at ``route_hook`` (default ``resid_post``;
    ``attn_z`` for a hook_z SAE). Refused: a hook that is no hook of a block (the embeddings, an unknown name), a hook
    other than ``route_hook`` when the route names one (``check_hook: false`` never changes the kind of hook), a
    hook the model's family lacks (``families.check_hook``), a transcoder whose output is in another block or
    before its input, ``d_in`` other than the input hook's width (``d_model``; heads x head_dim at ``attn_z``),
    ``d_out`` other than the output hook's, and, unless ``check_hook`` is false, a block other than ``layer`` (with
    ``check_hook: false`` the SAE moves to ``layer``, both points alike). ``model_config``: the model's
    config.json (None: no family or attention widths known, only ``d_model`` checked). ``check_hook_fix`` is
    appended to the fix of a layer refusal (how to turn the check off)."""
    from causal_kl import families

    family = families.check_family(model_config, str(model_file or file), model) if model_config is not None else None
    fam_hooks = family.hooks if family is not None else None
    if model_config is not None:
        d_model_cfg, d_attn = model_widths(model_config)
        d_model = d_model if d_model is not None else d_model_cfg
    else:
        d_attn = None
    layer = int(layer)

    def site_of(tl: str | None, hf: str | None) -> HookSite | None:
        name = hf if hf else tl
        if not name:
            return None
        site = parse_hook_name(str(name), fam_hooks)
        if hf and site.hook_name != hf:  # say both: the module path the files name and what it is
            site = HookSite(f"{hf} = {site.hook_name}", site.kind, site.layer, site.point)
        return site

    def not_a_hook(site: HookSite, field: str) -> CausalKLError:
        lacks = f" ({family.name} has no module there)" if family is not None and H.is_module_path(site.hook_name) else ""
        want = H.Point(layer, route_hook or H.RESID_POST).saelens_name()
        return CausalKLError(file, field, f"the SAE was trained at {site.describe()}{lacks}: no hook causal-kl splices at",
                             f"use an SAE trained at a hook of a block (e.g. {want})")

    site_in = site_of(hook_name, hf_hook_name)
    if site_in is None:
        p_in = H.Point(layer, route_hook or ("attn_z" if hook_z else H.RESID_POST))
    elif site_in.point is None:
        raise not_a_hook(site_in, "hook_name")
    else:
        p_in = site_in.point
    if transcoder:
        site_out = site_of(hook_name_out, hf_hook_name_out)
        if site_out is None:
            raise CausalKLError(file, "hook_name_out", "a transcoder whose files do not say where it writes",
                                "give the transcoder's cfg.json a hook_name_out (e.g. blocks.L.hook_mlp_out)")
        if site_out.point is None:
            raise not_a_hook(site_out, "hook_name_out")
        p_out = site_out.point
    else:
        p_out = p_in
    if route_hook is not None and p_out.hook != route_hook:  # the route splices where the SAE (a transcoder) writes
        want = H.Point(layer, route_hook).saelens_name()
        trained = site_in.describe() if site_in is not None else p_in.saelens_name()
        if transcoder:
            trained = f"{trained} -> {p_out.saelens_name()} (a transcoder)"
        raise CausalKLError(file, "hook_name_out" if transcoder else "hook_name",
                            f"the SAE was trained at {trained} but the route splices {want}",
                            f"use an SAE trained at blocks.L.{H.TL_NAME[route_hook]} (check_hook: false moves an SAE "
                            f"to another layer, never to another hook)")
    if family is not None:
        for p, field in ((p_in, "hook_name"), (p_out, "hook_name_out")) if transcoder else ((p_in, "hook_name"),):
            families.check_hook(family, _text_config(model_config), p.hook, file, field, model)
    if transcoder:
        order = ("attn_z", "attn_out", "resid_mid", "mlp_in", "mlp_out", "resid_post")
        if p_out.layer != p_in.layer or order.index(p_out.hook) <= order.index(p_in.hook):
            raise CausalKLError(file, "hook_name_out", f"the transcoder reads {p_in.saelens_name()} and writes "
                                f"{p_out.saelens_name()}: its output must come after its input in the same block",
                                "use a transcoder that writes later in the block it reads (e.g. hook_mlp_in -> hook_mlp_out)")

    def width(hook: str) -> int | None:
        return d_attn if hook == "attn_z" else d_model

    want_in = width(p_in.hook)
    if want_in is not None and d_in != int(want_in):
        if p_in.hook == "attn_z":
            cfg = _text_config(model_config)
            raise CausalKLError(file, "d_in", f"the SAE reads attention heads (attn.hook_z) of width {d_in} but {model} "
                                f"has {cfg.get('num_attention_heads', cfg.get('n_head'))} heads x head_dim = {want_in}",
                                "use an SAE trained on this model's attn.hook_z (d_in = num_attention_heads x head_dim)")
        raise CausalKLError(file, "d_in", f"the SAE reads vectors of width {d_in} but the model's width is {want_in}",
                            "use an SAE trained on this model (d_in = hidden_size)")
    want_out = width(p_out.hook)
    if transcoder and want_out is not None and d_out != int(want_out):
        raise CausalKLError(file, "d_out", f"the transcoder writes vectors of width {d_out} but {p_out.saelens_name()} of "
                            f"the model has width {want_out}", "use a transcoder trained on this model")
    if p_in.layer != layer:
        if check_hook:
            trained = site_in.describe()
            at = H.Point(layer, p_in.hook).saelens_name()
            use = f"{at}" if p_in.hook != H.RESID_POST else f"layer {layer} ({at})"
            fix = f"use it at layer {p_in.layer}" + (f", {check_hook_fix}" if check_hook_fix else "")
            raise CausalKLError(file, "hook_name", f"the SAE was trained at {trained} but is used at {use}", fix)
        shift = layer - p_in.layer
        p_in, p_out = H.Point(layer, p_in.hook), H.Point(p_out.layer + shift, p_out.hook)
    return p_in, p_out
