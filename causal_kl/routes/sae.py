"""Route kind ``sae``: a sparse autoencoder's reconstruction ``decode(encode(gold))``, in float32.

A route entry::

    {"kind": "sae", "path": "suite/L{layer}", "format": "auto" | "saelens" | "gemma_scope",
     "layer": 3 | [1, 3] | None, "check_hook": True, "batch_size": 4096}

``path`` is a SAELens directory (``cfg.json`` + ``sae_weights.safetensors``), a Gemma Scope
``params.npz`` or a Gemma Scope 2 ``params.safetensors`` (or a directory holding one); ``{layer}``
in it is the layer, so one entry names a suite (one SAE per layer). The SAE definitions, the
formats and the hook/layer rules are ``causal_kl.sae``'s (SAELens' own); this module adds the
route's two steps:

- ``check_sae_config``: the parse-time check (``causal_kl.checks.check_routes``). It imports
  neither torch, transformers nor safetensors: it reads ``cfg.json`` / ``config.json`` and the
  *headers* of the weight files (safetensors' 8-byte length + JSON header; the ``.npy`` headers
  inside ``params.npz``), never the weights. It refuses, each with the one-line error
  ``causal_kl.sae`` raises for the same problem at load time: a missing path, a format other
  than the route's ``format``, an unknown or unsupported architecture, an activation,
  normalisation or hook kind the loader refuses, missing tensors or shapes that do not fit,
  ``d_in`` differing from the model's width, and (unless ``check_hook`` is false) an SAE whose
  files say it was trained at another hook or layer than the route's.
- ``reconstruct``: loads the SAE (``causal_kl.sae.load_sae``, checked against the width and,
  unless ``check_hook`` is false, the layer), runs ``decode(encode(g))`` on the golds in batches
  of ``batch_size`` on ``device``, and returns SAELens-style sparsity statistics of those golds
  (``l0``: mean number of latents != 0 per vector; ``dead_share``/``n_dead``: latents == 0 on
  every gold; ``explained_variance``: SAELens' definition, ``causal_kl.sae.explained_variance``).

``causal_kl.sae`` imports torch at module level, so the few torch-free lines the parse-time
check needs from it (hook names, ``cfg.json`` spellings, Gemma Scope folder layout) are
mirrored here; ``tests/test_routes_sae.py`` holds the two to the same verdicts.
"""

from __future__ import annotations

import json
import re
import struct
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from causal_kl.errors import CausalKLError

if TYPE_CHECKING:  # torch is imported where the SAE runs: the parse-time check stays free of it
    from causal_kl.sae import SparseAutoencoder

FORMATS = ("auto", "saelens", "gemma_scope")

# The file names, architectures and settings of causal_kl.sae (kept equal by the tests).
SAELENS_CFG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
SAELENS_SCALER = "activation_scaler.json"
GEMMA_SCOPE_NPZ = "params.npz"
GEMMA_SCOPE_SAFETENSORS = "params.safetensors"
GEMMA_SCOPE_CONFIG = "config.json"
ARCHITECTURES = ("standard", "jumprelu", "topk")
NORMALIZATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")
_ARCH_ALIASES = {"jump_relu": "jumprelu", "relu": "standard", "top_k": "topk"}
_KNOWN_UNSUPPORTED = {
    "gated", "batchtopk", "matryoshka_batchtopk", "abstopk", "matching_pursuit", "temporal",
    "transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder",
}
_RESID_POST = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")
_RESID_PRE = re.compile(r"^blocks\.(\d+)\.hook_resid_pre$")
_HF_LAYER_OUT = re.compile(r"^(?:model\.)?(?:language_model\.)?(?:model\.)?layers\.(\d+)(?:\.output)?$")


# ------------------------------------------------------------------------------ the route's files
def sae_path(entry: dict, layer: int) -> str:
    """The route's SAE path at ``layer``: ``entry['path']`` with ``{layer}`` filled in."""
    return str(entry["path"]).replace("{layer}", str(int(layer)))


def _route_field(source: str, name: str | None, key: str) -> tuple[str, str]:
    """(file, field) of a config key of the route: ``routes.<name>.<key>`` in ``source``."""
    return source, f"routes.{name}.{key}" if name else key


def resolve_sae(entry: dict, layer: int, source: str = "config routes", name: str | None = None) -> tuple[str, Path]:
    """``(format, file)`` of the route's SAE at ``layer``: ``("saelens", directory)`` or ``("gemma_scope", weights file)``.

    The same choice ``causal_kl.sae.load_sae`` makes from the files present; a missing path, a path
    that holds no SAE, or a format other than the route's ``format`` is a one-line error.
    """
    p = Path(sae_path(entry, layer))
    want = entry.get("format") or "auto"
    if want not in FORMATS:
        raise CausalKLError(*_route_field(source, name, "format"), f"unknown format {want!r}", f"use one of {', '.join(FORMATS)}")
    if not p.exists():
        raise CausalKLError(*_route_field(source, name, "path"), f"SAE path '{p}' does not exist",
                            f"point the route at an SAE directory ({SAELENS_CFG} + {SAELENS_WEIGHTS}) or a Gemma Scope "
                            f"{GEMMA_SCOPE_NPZ} / {GEMMA_SCOPE_SAFETENSORS} ('{{layer}}' in the path is the layer)")
    if p.is_file():
        if p.name in (SAELENS_WEIGHTS, SAELENS_CFG):
            found = ("saelens", p.parent)
        elif p.suffix == ".npz" or p.name == GEMMA_SCOPE_SAFETENSORS:
            found = ("gemma_scope", p)
        else:
            raise CausalKLError(p, "sae path", "is not an SAE file",
                                f"give the SAE directory, its {SAELENS_WEIGHTS}, a Gemma Scope {GEMMA_SCOPE_NPZ} or {GEMMA_SCOPE_SAFETENSORS}")
    elif (p / SAELENS_CFG).exists() or (p / SAELENS_WEIGHTS).exists():
        found = ("saelens", p)
    elif (p / GEMMA_SCOPE_NPZ).exists():
        found = ("gemma_scope", p / GEMMA_SCOPE_NPZ)
    elif (p / GEMMA_SCOPE_SAFETENSORS).exists():
        found = ("gemma_scope", p / GEMMA_SCOPE_SAFETENSORS)
    else:
        raise CausalKLError(p, SAELENS_CFG, "no SAE found in this directory",
                            f"give a directory holding {SAELENS_CFG} + {SAELENS_WEIGHTS} (SAELens) or {GEMMA_SCOPE_NPZ} (Gemma Scope)")
    if want != "auto" and found[0] != want:
        raise CausalKLError(*_route_field(source, name, "format"), f"format is {want} but '{p}' holds a {found[0]} SAE",
                            f"set the route's format to auto or {found[0]}, or point path at a {want} SAE")
    return found


# --------------------------------------------------------------------- torch-free reading (parse time)
def hook_layer(hook_name: str) -> tuple[int | None, str]:
    """``(layer, description)`` of a hook name, as ``causal_kl.sae.parse_hook_name`` reads it.

    ``blocks.L.hook_resid_post`` and ``model.layers.L.output`` / ``layers.L`` are layer L;
    ``blocks.L.hook_resid_pre`` is layer L - 1; anything else is no layer (None).
    """
    name = hook_name.strip()
    if m := _RESID_POST.match(name):
        layer = int(m.group(1))
    elif (m := _RESID_PRE.match(name)) and int(m.group(1)) > 0:
        layer = int(m.group(1)) - 1
        return layer, f"{name} (the input of block {layer + 1} = layer {layer}, the output of block {layer})"
    elif m := _HF_LAYER_OUT.match(name):
        layer = int(m.group(1))
        name = f"blocks.{layer}.hook_resid_post"
    else:
        return None, f"{name} (not the output of a decoder block)"
    return layer, f"{name} (layer {layer}, the output of block {layer})"


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CausalKLError(path, None, f"not valid JSON ({e})", "re-save the SAE config") from e
    if not isinstance(obj, dict):
        raise CausalKLError(path, None, "is not a JSON object", "re-save the SAE config")
    return obj


def safetensors_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """``{tensor name: shape}`` from a safetensors file's header (8-byte little-endian length, then JSON); no weights read."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise ValueError("file shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > 100_000_000 or n > path.stat().st_size - 8:
                raise ValueError(f"header length {n} does not fit the file")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        return {k: tuple(int(s) for s in v["shape"]) for k, v in header.items() if k != "__metadata__"}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CausalKLError(path, None, f"not a readable safetensors file ({str(e).splitlines()[0]})",
                            "re-save the SAE weights with safetensors") from e


def npz_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """``{array name: shape}`` of an ``.npz`` from its members' ``.npy`` headers; no arrays read."""
    path = Path(path)
    fmt = np.lib.format
    try:
        shapes = {}
        with zipfile.ZipFile(path) as z:
            for member in z.namelist():
                if not member.endswith(".npy"):
                    continue
                with z.open(member) as f:
                    version = fmt.read_magic(f)
                    if version == (1, 0):
                        shape = fmt.read_array_header_1_0(f)[0]
                    elif version == (2, 0):
                        shape = fmt.read_array_header_2_0(f)[0]
                    else:  # a rare newer header version: let numpy read the member
                        shape = np.load(z.open(member)).shape
                shapes[member[: -len(".npy")]] = tuple(int(s) for s in shape)
        return shapes
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise CausalKLError(path, None, f"not a readable npz file ({str(e).splitlines()[0]})", "download params.npz again") from e


def _get(cfg: dict, *keys: str, default: Any = None) -> Any:
    """First of ``keys`` at the top level of ``cfg``, then under ``cfg['metadata']`` (as causal_kl.sae reads cfg.json)."""
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    for where in (cfg, meta):
        for key in keys:
            if key in where and where[key] is not None:
                return where[key]
    return default


def _int(value: Any, name: str, file: Path) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError) as e:
        raise CausalKLError(file, name, f"{value!r} is not an integer", f"set {name} to an integer") from e


def saelens_settings(raw: dict, file: str | Path) -> dict[str, Any]:
    """The settings of a SAELens ``cfg.json`` that the parse-time check needs (``causal_kl.sae.read_saelens_cfg``'s rules).

    Returns ``architecture``, ``d_in``, ``d_sae``, ``k``, ``normalize_activations``, ``hook_name``.
    """
    file = Path(file)
    arch = _get(raw, "architecture")
    act_fn = _get(raw, "activation_fn", "activation_fn_str")
    act_kwargs = _get(raw, "activation_fn_kwargs", default={}) or {}
    arch = "standard" if arch is None else _ARCH_ALIASES.get(str(arch).lower(), str(arch).lower())
    if act_fn == "topk" and arch == "standard":
        arch = "topk"
    if arch not in ARCHITECTURES:
        why = "is not supported here" if arch in _KNOWN_UNSUPPORTED else "is unknown"
        raise CausalKLError(file, "architecture", f"SAE architecture {arch!r} {why}",
                            f"use a {', '.join(ARCHITECTURES)} SAE (a BatchTopK SAE is saved by SAELens as jumprelu)")
    if act_fn is not None and act_fn not in ("relu", "topk") and not (arch == "jumprelu" and act_fn == "jumprelu"):
        raise CausalKLError(file, "activation_fn", f"activation {act_fn!r} is not supported (SAELens >= 6 ignores it and runs ReLU)",
                            "use an SAE with activation_fn relu (or topk)")
    k = _get(raw, "k")
    if k is None and isinstance(act_kwargs, dict):
        k = act_kwargs.get("k")
    norm = _get(raw, "normalize_activations", default="none")
    if isinstance(norm, bool):
        norm = "expected_average_only_in" if norm else "none"
    if norm not in NORMALIZATIONS:
        raise CausalKLError(file, "normalize_activations", f"{norm!r} is not supported",
                            f"use an SAE with normalize_activations in {', '.join(NORMALIZATIONS)} (fold whitening into the weights first)")
    if _get(raw, "hook_head_index", "hook_point_head_index") is not None:
        raise CausalKLError(file, "hook_head_index", "a per-attention-head SAE cannot reconstruct the residual stream",
                            "use a residual-stream SAE (blocks.L.hook_resid_post)")
    if _get(raw, "reshape_activations", default="none") not in ("none", None):
        raise CausalKLError(file, "reshape_activations",
                            f"{_get(raw, 'reshape_activations')!r} (hook_z) SAEs read attention heads, not the residual stream",
                            "use a residual-stream SAE (blocks.L.hook_resid_post)")
    hook = _get(raw, "hook_name", "hook_point")
    hf_hook = _get(raw, "hf_hook_name", "hf_hook_point_in")
    if hook is None and hf_hook is not None:
        hook = _normalised_hook(str(hf_hook))
    stated_layer = _get(raw, "hook_layer", "hook_point_layer")
    if hook is not None and stated_layer is not None:
        m = re.match(r"^blocks\.(\d+)\.", str(hook))
        if m and int(m.group(1)) != int(stated_layer):
            raise CausalKLError(file, "hook_layer", f"hook_layer {stated_layer} contradicts hook_name {hook}",
                                "fix cfg.json so hook_layer is the block index in hook_name")
    return {"architecture": arch, "d_in": _int(_get(raw, "d_in"), "d_in", file), "d_sae": _int(_get(raw, "d_sae"), "d_sae", file),
            "k": _int(k, "k", file), "normalize_activations": norm, "hook_name": None if hook is None else str(hook)}


def _normalised_hook(name: str) -> str:
    """HF-style layer-output names as ``blocks.L.hook_resid_post`` (as ``parse_hook_name(...).hook_name``)."""
    m = _HF_LAYER_OUT.match(name.strip())
    return f"blocks.{int(m.group(1))}.hook_resid_post" if m else name.strip()


def _gemma_scope_hook_from_path(folder: Path) -> str | None:
    """Gemma Scope repos' folder layout -> hook (``causal_kl.sae._gemma_scope_hook_from_path``)."""
    parts = [q.lower() for q in folder.resolve().parts]
    layer = None
    for q in parts:
        if m := re.match(r"^layer_(\d+)(?:_|$)", q):
            layer = int(m.group(1))
    if layer is None:
        return None
    if any(q in ("resid_post", "resid_post_all") or re.search(r"[-_]res$", q) for q in parts):
        return f"blocks.{layer}.hook_resid_post"
    if any(q in ("mlp_out", "mlp_out_all") or re.search(r"[-_]mlp$", q) for q in parts):
        return f"blocks.{layer}.hook_mlp_out"
    if any(q in ("attn_out", "attn_out_all") or re.search(r"[-_]att$", q) for q in parts):
        return f"blocks.{layer}.attn.hook_z"
    return None


def _check_tensors(shapes: dict[str, tuple[int, ...]], arch: str, file: Path, d_in_cfg: int | None = None,
                   d_sae_cfg: int | None = None, k: int | None = None) -> tuple[int, int]:
    """Required tensors present and shaped ``W_enc [d_in, d_sae]`` etc.; returns ``(d_in, d_sae)``."""
    required = ["W_enc", "b_enc", "W_dec", "b_dec"] + (["threshold"] if arch == "jumprelu" else [])
    missing = [n for n in required if n not in shapes]
    if missing:
        raise CausalKLError(file, missing[0], f"tensor(s) {', '.join(missing)} missing (has {', '.join(sorted(shapes)) or 'none'})",
                            f"a {arch} SAE needs {', '.join(required)}")
    w_enc = shapes["W_enc"]
    if len(w_enc) == 2:
        for name, stated, actual in (("d_in", d_in_cfg, w_enc[0]), ("d_sae", d_sae_cfg, w_enc[1])):
            if stated is not None and stated != actual:
                raise CausalKLError(file, "W_enc", f"shape {w_enc} disagrees with cfg.json {name}={stated}",
                                    f"W_enc must be [d_in, d_sae] = [{d_in_cfg}, {d_sae_cfg}]; re-save the SAE")
    else:
        raise CausalKLError(file, "W_enc", f"shape {w_enc} is not [d_in, d_sae]", "store W_enc as a [d_in, d_sae] matrix")
    d_in, d_sae = w_enc
    expected = {"b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    if arch == "jumprelu":
        expected["threshold"] = (d_sae,)
    for name, shape in expected.items():
        if shapes[name] != shape:
            raise CausalKLError(file, name, f"shape {shapes[name]} does not fit W_enc [d_in={d_in}, d_sae={d_sae}] (expected {shape})",
                                "write the SAE's tensors with matching shapes (W_enc [d_in, d_sae], W_dec [d_sae, d_in])")
    if arch == "topk" and (k is None or not 1 <= k <= d_sae):
        raise CausalKLError(file, "k", f"a TopK SAE needs 1 <= k <= d_sae={d_sae}, got {k!r}",
                            "set k in cfg.json (or activation_fn_kwargs.k)")
    return d_in, d_sae


def _check_width_and_hook(file: Path, d_in: int, d_model: int | None, hook: str | None, layer: int, check_hook: bool,
                          where: str) -> None:
    if d_model is not None and d_in != int(d_model):
        raise CausalKLError(file, "d_in", f"the SAE reads vectors of width {d_in} but the model's width is {d_model}",
                            "use an SAE trained on this model (d_in = hidden_size)")
    if not check_hook or hook is None:
        return
    trained, described = hook_layer(hook)
    if trained != int(layer):
        fix = f"use it at layer {trained}" if trained is not None else f"use an SAE trained at blocks.{int(layer)}.hook_resid_post"
        raise CausalKLError(file, "hook_name",
                            f"the SAE was trained at {described} but is used at layer {layer} (blocks.{int(layer)}.hook_resid_post)",
                            f"{fix}, or set {where}.check_hook: false to splice it anyway")


def check_sae_config(entry: dict, name: str, layer: int, d_model: int | None, source: str = "config") -> None:
    """Parse-time check of an ``sae`` route at ``layer`` against a model of width ``d_model`` (None: unknown).

    Reads only JSON files and tensor headers (no torch, transformers or safetensors import); raises
    the one-line ``CausalKLError`` loading would raise (see the module docstring).
    """
    fmt, found = resolve_sae(entry, layer, source, name)
    check_hook = bool(entry.get("check_hook", True))
    where = f"routes.{name}"
    if fmt == "saelens":
        cfg_path, weights = found / SAELENS_CFG, found / SAELENS_WEIGHTS
        for f in (cfg_path, weights):
            if not f.exists():
                raise CausalKLError(f, f.name, "not found",
                                    f"an SAELens SAE directory holds {SAELENS_CFG} and {SAELENS_WEIGHTS} (SAE.save_model writes both)")
        cfg = saelens_settings(_read_json(cfg_path), cfg_path)
        shapes = safetensors_shapes(weights)
        if "threshold" not in shapes and "log_threshold" in shapes:
            shapes["threshold"] = shapes["log_threshold"]
        d_in, _ = _check_tensors(shapes, cfg["architecture"], weights, cfg["d_in"], cfg["d_sae"], cfg["k"])
        if cfg["normalize_activations"] == "expected_average_only_in":
            scaler = found / SAELENS_SCALER
            if not scaler.exists() or _read_json(scaler).get("scaling_factor") is None:
                raise CausalKLError(cfg_path, "normalize_activations",
                                    f"expected_average_only_in, but no scaling factor ({SAELENS_SCALER} is missing or holds null)",
                                    f"put SAELens' {SAELENS_SCALER} beside cfg.json (an SAE route cannot pass the factor itself)")
        _check_width_and_hook(cfg_path, d_in, d_model, cfg["hook_name"], layer, check_hook, where)
        return
    # Gemma Scope: params.npz / params.safetensors, maybe config.json beside it
    raw_cfg: dict = {}
    if (found.parent / GEMMA_SCOPE_CONFIG).exists():
        raw_cfg = _read_json(found.parent / GEMMA_SCOPE_CONFIG)
        arch = str(raw_cfg.get("architecture", "jump_relu")).lower()
        if _ARCH_ALIASES.get(arch, arch) != "jumprelu" or "hf_hook_point_out" in raw_cfg or "affine_connection" in raw_cfg:
            raise CausalKLError(found.parent / GEMMA_SCOPE_CONFIG, "architecture",
                                f"not a residual JumpReLU SAE ({arch}{', a transcoder' if 'hf_hook_point_out' in raw_cfg else ''})",
                                "use a Gemma Scope resid_post SAE")
    shapes = npz_shapes(found) if found.suffix == ".npz" else safetensors_shapes(found)
    shapes = {("W_" + k[2:] if k.startswith("w_") else k): v for k, v in shapes.items()}
    required = ["W_enc", "b_enc", "W_dec", "b_dec", "threshold"]
    missing = [n for n in required if n not in shapes]
    if missing:
        raise CausalKLError(found, missing[0], f"tensor(s) {', '.join(missing)} missing (has {', '.join(sorted(shapes)) or 'none'})",
                            f"a Gemma Scope SAE file holds {', '.join(required)}")
    d_in, _ = _check_tensors(shapes, "jumprelu", found)
    hook = _normalised_hook(str(raw_cfg["hf_hook_point_in"])) if raw_cfg.get("hf_hook_point_in") else None
    if hook is None:
        hook = _gemma_scope_hook_from_path(found.parent)
    _check_width_and_hook(found, d_in, d_model, hook, layer, check_hook, where)


# ------------------------------------------------------------------------------------ run time
def load_route_sae(entry: dict, layer: int, d_model: int | None, device: str = "cpu",
                   source: str = "config routes") -> SparseAutoencoder:
    """The route's SAE at ``layer`` on ``device`` (``auto``: the GPU when there is one, as for the model), checked
    against the width ``d_model`` and (unless ``check_hook`` is false) against ``layer`` (``causal_kl.sae.load_sae``
    + ``check_compatible``)."""
    from causal_kl.models import resolve_device
    from causal_kl.sae import load_sae

    device = resolve_device(str(device))
    _, found = resolve_sae(entry, layer, source)
    sae = load_sae(found, "cpu", d_model=d_model)
    if entry.get("check_hook", True):
        try:
            sae.check_compatible(layer=int(layer))
        except CausalKLError as e:
            raise CausalKLError(e.file, e.field, e.problem, f"{e.fix}, or set the route's check_hook: false to splice it anyway") from e
    return sae.to(device)


def run_sae(sae: SparseAutoencoder, vectors: np.ndarray, batch_size: int | None = 4096) -> tuple[np.ndarray, np.ndarray]:
    """``decode(encode(x))`` of ``vectors [n, d_in]`` in float32, ``batch_size`` rows at a time.

    Returns the reconstructions ``[n, d_in]`` float32 (numpy, CPU) and, per latent, on how many
    vectors it was active (``!= 0``): ``[d_sae]`` int64.
    """
    import torch

    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != sae.d_in:
        raise ValueError(f"expected vectors [n, d_in={sae.d_in}], got {tuple(x.shape)}")
    out = np.empty_like(x)
    fired = torch.zeros(sae.d_sae, dtype=torch.int64, device=sae.device)
    step = len(x) if not batch_size else int(batch_size)
    for start in range(0, len(x), max(step, 1)):
        chunk = torch.from_numpy(x[start:start + step]).to(sae.device)
        acts = sae.encode(chunk)  # [b, d_sae]
        fired += (acts != 0).sum(dim=0)
        out[start:start + step] = sae.decode(acts, chunk).cpu().numpy()
    return out, fired.cpu().numpy()


def reconstruct(entry: dict, layer: int, golds: np.ndarray, device: str = "cpu",
                source: str = "config routes") -> tuple[np.ndarray, dict[str, Any]]:
    """The route's reconstructions of ``golds [n, d]`` (float32) and the SAE's sparsity on them.

    The statistics (JSON-ready): ``n``, ``l0``, ``dead_share``, ``n_dead``, ``d_sae``, ``d_in``,
    ``architecture``, ``hook_name``, ``explained_variance``, ``k``, ``apply_b_dec_to_input``,
    ``normalize_activations``, ``sae_file`` (the file read).
    """
    from causal_kl.sae import explained_variance

    golds = np.asarray(golds, dtype=np.float32)
    if golds.ndim != 2 or len(golds) == 0:
        raise ValueError(f"expected golds [n >= 1, d], got {golds.shape}")
    sae = load_route_sae(entry, layer, golds.shape[1], device, source)
    recon, fired = run_sae(sae, golds, int(entry.get("batch_size") or 4096))
    n_dead = int((fired == 0).sum())
    stats = {
        "n": int(len(golds)),
        "l0": float(fired.sum()) / len(golds),
        "dead_share": n_dead / sae.d_sae,
        "n_dead": n_dead,
        "d_sae": sae.d_sae,
        "d_in": sae.d_in,
        "architecture": sae.architecture,
        "hook_name": sae.hook_name,
        "explained_variance": explained_variance(golds, recon),
        "k": sae.k,
        "apply_b_dec_to_input": sae.apply_b_dec_to_input,
        "normalize_activations": sae.normalize_activations,
        "sae_file": sae.source,
    }
    return recon, stats
