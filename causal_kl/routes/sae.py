"""Route kind ``sae``: a sparse autoencoder's reconstruction ``decode(encode(gold))``, in float32.

A route entry::

    {"kind": "sae", "path": "suite/L{layer}", "format": "auto" | "saelens" | "gemma_scope" | "sparsify" | ...,
     "layer": 3 | [1, 3] | None, "check_hook": True, "batch_size": 4096}

``path`` is a SAELens directory (``cfg.json`` + ``sae_weights.safetensors``), a Gemma Scope
``params.npz`` or a Gemma Scope 2 ``params.safetensors`` (or a directory holding one), or an
EleutherAI sparsify folder (``cfg.json`` + ``sae.safetensors``, named after its hookpoint), a format of
``causal_kl.sae_dictionary`` (``dictionary_learning``, ``qwen_scope``, ``goodfire``, ``deepseek_r1``), or an SAE of
``causal_kl.sae_scope``'s formats (``format``: ``llama_scope``, ``llama_scope_r1_distill``, ``mwhanna_transcoder``,
``connor_rob_hook_z``; the last two are one file per layer); ``{layer}``
in it is the layer, so one entry names a suite (one SAE per layer). Instead of ``path`` an entry may
name the SAE by ``release`` + ``sae_id`` (SAELens' ``pretrained_saes.yaml``) or ``repo`` + ``folder``
(any hub repo), optionally at a ``revision``: found in the Hugging Face cache by ``causal_kl.sae_hub``
(which the workflow pins to the cached commit in the jobs' params, ``hub``). The SAE definitions, the
formats and the hook/layer rules are ``causal_kl.sae``'s (SAELens' own); this module adds the
route's two steps:

- ``check_sae_config``: the parse-time check (``causal_kl.checks.check_routes``). It imports
  neither torch, transformers nor safetensors: it reads ``cfg.json`` / ``config.json`` and the
  *headers* of the weight files (safetensors' 8-byte length + JSON header; the ``.npy`` headers
  inside ``params.npz``), never the weights. It refuses, each with the one-line error
  ``causal_kl.sae`` raises for the same problem at load time: a missing path (or a named SAE
  not in the Hugging Face cache), a format other than the route's ``format``, an unknown or
  unsupported architecture, an activation, normalisation or hook kind the loader refuses, missing
  tensors or shapes that do not fit, a safetensors file whose size is not what its header's data
  offsets say (truncated or overlong), ``d_in`` differing from the model's width, and (unless
  ``check_hook`` is false) an SAE whose files say it was trained at another hook or layer than the
  route's.
- ``route_points``: the same check for a route that splices where its SAE's files say, against the model's
  ``config.json``: returns ``(point_in, point_out)`` (``causal_kl.hooks.Point``) and refuses, one line each,
  a hook the model's family lacks, a hook_z width other than heads x head_dim, a transcoder's output width
  other than its output hook's, another block than the route's layer (``check_hook: false`` moves the SAE
  to the route's layer, never to another kind of hook) and another hook than the entry's optional ``hook``.
  ``check_sae_config`` is the residual-stream route's check (its hook is ``resid_post``).
- ``reconstruct``: loads the SAE (``causal_kl.sae.load_sae``, checked against the width and,
  unless ``check_hook`` is false, the layer), runs ``decode(encode(g))`` on the golds in batches
  of ``batch_size`` on ``device``, and returns SAELens-style sparsity statistics of those golds
  (``l0``: mean number of latents != 0 per vector; ``dead_share``/``n_dead``: latents == 0 on
  every gold; ``explained_variance``: SAELens' definition, ``causal_kl.sae.explained_variance``).

The formats' rules (file names, ``cfg.json`` spellings, hooks and layers) are read from
``causal_kl.sae_format``, which the loader in ``causal_kl.sae`` uses too and which imports no
torch: the check and the loader cannot drift apart.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from causal_kl.errors import CausalKLError
from causal_kl.io import read_json
from causal_kl import sae_format as fmt  # the formats' rules, shared with the loader (causal_kl.sae)
from causal_kl.hooks import HOOKS
from causal_kl import sae_scope
from causal_kl import sae_hub  # SAEs named by SAELens release or hub repo, read from the Hugging Face cache
from causal_kl import sae_dictionary  # dictionary_learning, Qwen-Scope, Goodfire, DeepSeek-R1 files

if TYPE_CHECKING:  # torch is imported where the SAE runs: the parse-time check stays free of it
    from causal_kl.sae import SparseAutoencoder
    from causal_kl.sae_hub import HubSAE

FORMATS = ("auto", *fmt.FORMATS)


# ------------------------------------------------------------------------------ the route's files
def sae_path(entry: dict, layer: int) -> str:
    """The route's SAE path at ``layer``: ``entry['path']`` with ``{layer}`` filled in."""
    return str(entry["path"]).replace("{layer}", str(int(layer)))


def _route_field(source: str, name: str | None, key: str) -> tuple[str, str]:
    """(file, field) of a config key of the route: ``routes.<name>.<key>`` in ``source``."""
    return source, f"routes.{name}.{key}" if name else key


def _hub_hint(path: str) -> str:
    """For a missing relative path that reads like ``org/repo/folder``: how to name it on the hub instead."""
    parts = Path(path).parts
    if len(parts) >= 3 and not Path(path).is_absolute() and not parts[0].startswith(".") and not Path(parts[0]).exists():
        return (f"; to read it from the Hugging Face cache write repo: {parts[0]}/{parts[1]} and folder: "
                f"{'/'.join(parts[2:])} instead of path (or release + sae_id of SAELens' pretrained_saes.yaml)")
    return ""


@dataclass(frozen=True)
class RouteSAE:
    """Where a route's SAE is at one layer: its format, the file ``causal_kl.sae_format.locate_sae`` gives (a folder,
    or Gemma Scope's weights file), and for a named SAE what the hub cache says of it (``causal_kl.sae_hub.HubSAE``)."""

    format: str
    file: Path
    hub: "HubSAE | None" = None

    @property
    def norm_scaling_factor(self) -> float | None:
        return self.hub.norm_scaling_factor if self.hub else None

    @property
    def config_overrides(self) -> dict:
        return dict(self.hub.config_overrides) if self.hub else {}


def resolve_sae(entry: dict, layer: int, source: str = "config routes", name: str | None = None) -> RouteSAE:
    """The route's SAE at ``layer``: by ``path`` (a SAELens or sparsify folder, a Gemma Scope weights file), or
    named (``release`` + ``sae_id`` or ``repo`` + ``folder``) and found in the Hugging Face cache (``causal_kl.sae_hub``).

    The same choice ``causal_kl.sae.load_sae`` makes from the files present; a missing path, a path
    that holds no SAE, a named SAE not in the cache, or a format other than the route's ``format`` is a
    one-line error.
    """
    want = entry.get("format") or "auto"
    if want not in FORMATS:
        raise CausalKLError(*_route_field(source, name, "format"), f"unknown format {want!r}", f"use one of {', '.join(FORMATS)}")
    hub = None
    if sae_hub.is_named(entry):
        hub = sae_hub.resolve_named(entry, layer, source, name)
        p = hub.path
    else:
        if entry.get("revision") is not None:
            raise CausalKLError(*_route_field(source, name, "revision"), "a revision pins a hub SAE, but the route names a local path",
                                "remove revision, or name the SAE by release + sae_id or repo + folder")
        p = Path(sae_path(entry, layer))
        if not p.exists():
            raise CausalKLError(*_route_field(source, name, "path"), f"SAE path '{p}' does not exist",
                                f"point the route at an SAE directory ({fmt.SAELENS_CFG} + {fmt.SAELENS_WEIGHTS}, or sparsify's "
                                f"{fmt.SPARSIFY_CFG} + {fmt.SPARSIFY_WEIGHTS}) or a Gemma Scope {fmt.GEMMA_SCOPE_NPZ} / "
                                f"{fmt.GEMMA_SCOPE_SAFETENSORS} ('{{layer}}' in the path is the layer){_hub_hint(str(p))}")
    kind, found = fmt.locate_sae(p)
    if want != "auto" and kind != want:
        raise CausalKLError(*_route_field(source, name, "format"), f"format is {want} but '{p}' holds a {kind} SAE",
                            f"set the route's format to auto or {kind}, or point the route at a {want} SAE")
    return RouteSAE(kind, found, hub)


# --------------------------------------------------------------------- torch-free reading (parse time)
safetensors_shapes = fmt.safetensors_shapes
"""``{tensor name: shape}`` from a safetensors file's header, its size checked against the header (no weights read)."""


def npz_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """``{array name: shape}`` of an ``.npz`` from its members' ``.npy`` headers; no arrays read."""
    path = Path(path)
    npy = np.lib.format
    try:
        shapes = {}
        with zipfile.ZipFile(path) as z:
            for member in z.namelist():
                if not member.endswith(".npy"):
                    continue
                with z.open(member) as f:
                    version = npy.read_magic(f)
                    if version == (1, 0):
                        shape = npy.read_array_header_1_0(f)[0]
                    elif version == (2, 0):
                        shape = npy.read_array_header_2_0(f)[0]
                    else:  # a rare newer header version: let numpy read the member
                        shape = np.load(z.open(member)).shape
                shapes[member[: -len(".npy")]] = tuple(int(s) for s in shape)
        return shapes
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise CausalKLError(path, None, f"not a readable npz file ({str(e).splitlines()[0]})", "download params.npz again") from e


def _check_tensors(shapes: dict[str, tuple[int, ...]], arch: str, file: Path, d_in_cfg: int | None = None,
                   d_sae_cfg: int | None = None, k: int | None = None, d_out_cfg: int | None = None) -> tuple[int, int, int]:
    """Required tensors present and shaped ``W_enc [d_in, d_sae]`` etc.; returns ``(d_in, d_sae, d_out)``."""
    fmt.check_required_tensors(shapes, arch, file)
    w_enc = shapes["W_enc"]
    if len(w_enc) == 2:
        for name, stated, actual in (("d_in", d_in_cfg, w_enc[0]), ("d_sae", d_sae_cfg, w_enc[1])):
            if stated is not None and stated != actual:
                raise CausalKLError(file, "W_enc", f"shape {w_enc} disagrees with cfg.json {name}={stated}",
                                    f"W_enc must be [d_in, d_sae] = [{d_in_cfg}, {d_sae_cfg}]; re-save the SAE")
    else:
        raise CausalKLError(file, "W_enc", f"shape {w_enc} is not [d_in, d_sae]", "store W_enc as a [d_in, d_sae] matrix")
    d_in, d_sae = w_enc
    d_out = d_in
    if fmt.is_transcoder(arch) and len(shapes["W_dec"]) == 2:
        d_out = shapes["W_dec"][1]
        if d_out_cfg is not None and d_out_cfg != d_out:
            raise CausalKLError(file, "W_dec", f"shape {shapes['W_dec']} disagrees with cfg.json d_out={d_out_cfg}",
                                f"W_dec must be [d_sae, d_out] = [{d_sae}, {d_out_cfg}]; re-save the transcoder")
    expected = {"W_dec": (d_sae, d_out), "b_dec": (d_out,)}
    for name in fmt.GATED_TENSORS if arch == "gated" else ("b_enc",):
        expected[name] = (d_sae,)
    if fmt.base_architecture(arch) == "jumprelu":
        expected["threshold"] = (d_sae,)
    if fmt.has_skip(arch):
        expected["W_skip"] = (d_out, d_in)
    for name, shape in expected.items():
        if shapes[name] != shape:
            raise CausalKLError(file, name, f"shape {shapes[name]} does not fit W_enc [d_in={d_in}, d_sae={d_sae}] (expected {shape})",
                                "write the SAE's tensors with matching shapes (W_enc [d_in, d_sae], W_dec [d_sae, d_in])")
    if arch == "topk" and (k is None or not 1 <= k <= d_sae):
        raise CausalKLError(file, "k", f"a TopK SAE needs 1 <= k <= d_sae={d_sae}, got {k!r}",
                            "set k in cfg.json (or activation_fn_kwargs.k)")
    return d_in, d_sae, d_out


@dataclass(frozen=True)
class SAEFiles:
    """What an SAE's files say, read without torch (``read_sae_files``): the file errors name, widths and hooks
    (the keyword arguments of ``causal_kl.sae_format.sae_points``)."""

    file: Path
    architecture: str
    d_in: int
    d_sae: int
    d_out: int
    hook_name: str | None
    hook_name_out: str | None = None
    hf_hook_name: str | None = None
    hf_hook_name_out: str | None = None
    hook_z: bool = False

    @property
    def transcoder(self) -> bool:
        return fmt.is_transcoder(self.architecture)

    def points(self, layer: int, **kw):
        """``causal_kl.sae_format.sae_points`` of these files at ``layer``."""
        return fmt.sae_points(self.file, d_in=self.d_in, d_out=self.d_out, hook_name=self.hook_name,
                              hook_name_out=self.hook_name_out, hf_hook_name=self.hf_hook_name,
                              hf_hook_name_out=self.hf_hook_name_out, transcoder=self.transcoder, hook_z=self.hook_z,
                              layer=layer, **kw)


def read_sae_files(entry: dict, name: str | None, layer: int, source: str = "config") -> SAEFiles:
    """The route's SAE at ``layer``, its files checked as the loader checks them (format, architecture, settings,
    tensors and shapes, truncation, the scaling factor); reads only JSON and tensor headers."""
    found = resolve_sae(entry, layer, source, name)
    if found.format in sae_dictionary.FORMATS:  # dictionary_learning, Qwen-Scope, Goodfire, DeepSeek-R1: pickle opcodes
        cfg, shapes, weights = sae_dictionary.read_files(found.format, found.file, found.config_overrides)
        d_in, d_sae, d_out = _check_tensors(shapes, cfg["architecture"], weights, cfg["d_in"], cfg["d_sae"], cfg["k"])
        return SAEFiles(sae_dictionary.config_file(found.format, found.file), cfg["architecture"], d_in, d_sae, d_out,
                        cfg["hook_name"], hf_hook_name=cfg["hf_hook_name"])
    if found.format in sae_scope.FORMATS:  # Llama Scope, mwhanna's transcoders, hook_z .pt files
        return SAEFiles(**sae_scope.read_files(found.format, found.file, found.norm_scaling_factor))
    if found.format == "saelens":
        cfg_path, weights = fmt.saelens_files(found.file)
        cfg = fmt.read_saelens_cfg({**read_json(cfg_path, fmt.SAE_CONFIG_FIX), **found.config_overrides}, cfg_path)
        shapes = safetensors_shapes(weights)
        if "threshold" not in shapes and "log_threshold" in shapes:
            shapes["threshold"] = shapes["log_threshold"]
        d_in, d_sae, d_out = _check_tensors(shapes, cfg["architecture"], weights, cfg["d_in"], cfg["d_sae"], cfg["k"],
                                            cfg["d_out"])
        if (cfg["normalize_activations"] == "expected_average_only_in" and found.norm_scaling_factor is None
                and fmt.scaler_factor(found.file) is None):
            raise fmt.missing_scaler_error(cfg_path, _scaler_fix(found))
        return SAEFiles(cfg_path, cfg["architecture"], d_in, d_sae, d_out, cfg["hook_name"], cfg["hook_name_out"],
                        cfg["hf_hook_name"], cfg["hf_hook_name_out"], cfg["hook_z"])
    if found.format == "sparsify":
        cfg_path, weights = found.file / fmt.SPARSIFY_CFG, found.file / fmt.SPARSIFY_WEIGHTS
        for f in (cfg_path, weights):
            if not f.exists():
                raise CausalKLError(f, f.name, "not found", f"a sparsify SAE folder holds {fmt.SPARSIFY_CFG} and "
                                    f"{fmt.SPARSIFY_WEIGHTS} (SparseCoder.save_to_disk writes both)")
        cfg = fmt.read_sparsify_cfg(read_json(cfg_path, fmt.SAE_CONFIG_FIX), cfg_path, found.file)
        fmt.check_sparsify_tensors(fmt.sparsify_names(safetensors_shapes(weights)), cfg, weights, cfg_path)
        return SAEFiles(cfg_path, "topk", cfg["d_in"], cfg["d_sae"], cfg["d_in"], cfg["hook_name"],
                        hf_hook_name=cfg["hf_hook_name"])
    # Gemma Scope: params.npz / params.safetensors, maybe config.json beside it
    raw_cfg = fmt.gemma_scope_config(found.file)
    where = fmt.gemma_scope_hooks(raw_cfg, found.file)
    shapes = fmt.gemma_scope_names(npz_shapes(found.file) if found.file.suffix == ".npz" else safetensors_shapes(found.file))
    arch = fmt.gemma_scope_architecture(where, shapes, found.file)
    fmt.check_required_tensors(shapes, "jumprelu", found.file, gemma_scope=True)
    if fmt.has_skip(arch):
        shapes["W_skip"] = tuple(reversed(shapes[fmt.GEMMA_SCOPE_SKIP]))
    d_in, d_sae, d_out = _check_tensors(shapes, arch, found.file)
    return SAEFiles(found.file, arch, d_in, d_sae, d_out, where.hook_name, where.hook_name_out, where.hf_hook_name,
                    where.hf_hook_name_out)


def check_sae_config(entry: dict, name: str, layer: int, d_model: int | None, source: str = "config"):
    """Parse-time check of an ``sae`` route splicing the residual stream at ``layer`` of a model of width ``d_model``
    (None: unknown); returns ``(point_in, point_out)``. The route's hook is ``entry['hook']``, default ``resid_post``:
    an SAE trained at another hook is refused whatever ``check_hook`` says (``route_points`` takes the SAE's own hook).

    Reads only JSON files and tensor headers (no torch, transformers or safetensors import); raises
    the one-line ``CausalKLError`` loading would raise (see the module docstring).
    """
    files = read_sae_files(entry, name, layer, source)
    return files.points(int(layer), check_hook=bool(entry.get("check_hook", True)),
                        route_hook=entry.get("hook") or "resid_post", d_model=d_model,
                        check_hook_fix=f"or set routes.{name}.check_hook: false to splice it anyway")


def route_points(entry: dict, name: str, layer: int, model_config: dict, source: str = "config",
                 model: str = "the model", model_file: str | None = None):
    """Parse time: where an ``sae`` route reads and splices at ``layer`` of a model (its config.json as a dict):
    ``(point_in, point_out)`` (``causal_kl.hooks.Point``; the same point for an SAE, the input and output hooks for a
    transcoder), after every check ``check_sae_config`` makes and, one line each: a hook the model's family lacks, a
    hook_z SAE whose width is not heads x head_dim, a transcoder whose output width is not its output hook's, an SAE
    at another block than ``layer`` (unless ``check_hook`` is false: then it moves to ``layer``, never to another
    kind of hook), and an SAE at another hook than ``entry['hook']`` when the route names one (by default the
    route splices wherever the SAE's files say). ``model`` / ``model_file`` name the model in messages."""
    if entry.get("hook") is not None and entry["hook"] not in HOOKS:
        raise CausalKLError(*_route_field(source, name, "hook"), f"unknown hook {entry['hook']!r}", f"use one of {', '.join(HOOKS)}")
    files = read_sae_files(entry, name, layer, source)
    return files.points(int(layer), check_hook=bool(entry.get("check_hook", True)), route_hook=entry.get("hook"),
                        model_config=model_config, model=model, model_file=model_file,
                        check_hook_fix=f"or set routes.{name}.check_hook: false to splice it anyway")


def _scaler_fix(found: RouteSAE) -> str:
    if found.hub is not None:
        return (f"SAELens' pretrained_saes.yaml lists no norm_scaling_factor for {found.hub.label}: name the SAE by a release "
                f"that lists one, or put SAELens' {fmt.SAELENS_SCALER} beside cfg.json and give its path")
    return f"put SAELens' {fmt.SAELENS_SCALER} beside cfg.json (or name the SAE by its SAELens release, which lists the factor)"


# ------------------------------------------------------------------------------------ run time
def load_route_sae(entry: dict, layer: int, d_model: int | None, device: str = "cpu",
                   source: str = "config routes", model_config: dict | None = None) -> SparseAutoencoder:
    """The route's SAE at ``layer`` on ``device`` (``auto``: the GPU when there is one, as for the model), checked
    as at parse time (``SparseAutoencoder.check_compatible``: the rules of ``check_sae_config``, or with
    ``model_config`` those of ``route_points``). A named SAE is read from the Hugging Face cache with its release's
    norm scaling factor and config overrides; its ``metadata['hub']`` is the cached revision
    (``HubSAE.fingerprint``). ``sae.metadata['points']`` is ``(point_in, point_out)``, where the run splices."""
    from causal_kl.models import resolve_device
    from causal_kl.sae import load_sae

    device = resolve_device(str(device))
    found = resolve_sae(entry, layer, source)
    sae = load_sae(found.file, "cpu", norm_scaling_factor=found.norm_scaling_factor, cfg_overrides=found.config_overrides)
    if found.hub is not None:
        sae.metadata["hub"] = found.hub.fingerprint()
        sae.metadata["name"] = found.hub.label
    route_hook = entry.get("hook") or (None if model_config is not None else "resid_post")
    sae.metadata["points"] = sae.check_compatible(
        d_model, int(layer), check_hook=bool(entry.get("check_hook", True)), route_hook=route_hook,
        model_config=model_config, check_hook_fix="or set the route's check_hook: false to splice it anyway")
    return sae.to(device)


def run_sae(sae: SparseAutoencoder, vectors: np.ndarray, batch_size: int | None = 4096) -> tuple[np.ndarray, np.ndarray]:
    """``decode(encode(x))`` of ``vectors [n, d_in]`` in float32, ``batch_size`` rows at a time (with a skip
    transcoder's skip term).

    Returns the reconstructions ``[n, d_out]`` float32 (numpy, CPU; ``d_out = d_in`` for an SAE) and, per latent, on
    how many vectors it was active (``!= 0``): ``[d_sae]`` int64.
    """
    import torch

    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != sae.d_in:
        raise ValueError(f"expected vectors [n, d_in={sae.d_in}], got {tuple(x.shape)}")
    out = np.empty((len(x), sae.d_out), dtype=np.float32)
    fired = torch.zeros(sae.d_sae, dtype=torch.int64, device=sae.device)
    step = len(x) if not batch_size else int(batch_size)
    for start in range(0, len(x), max(step, 1)):
        chunk = torch.from_numpy(x[start:start + step]).to(sae.device)
        acts = sae.encode(chunk)  # [b, d_sae]
        fired += (acts != 0).sum(dim=0)
        out[start:start + step] = sae.decode(acts, chunk).cpu().numpy()
    return out, fired.cpu().numpy()


def reconstruct(entry: dict, layer: int, golds: np.ndarray, device: str = "cpu",
                source: str = "config routes", model_config: dict | None = None,
                targets: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """The route's reconstructions of ``golds [n, d_in]`` (float32; the vectors at the route's input point) and the
    SAE's sparsity on them: ``[n, d_out]``, what replaces the output point (a transcoder's prediction of it).

    The statistics (JSON-ready): ``n``, ``l0``, ``dead_share``, ``n_dead``, ``d_sae``, ``d_in``,
    ``architecture``, ``hook_name``, ``explained_variance``, ``k``, ``apply_b_dec_to_input``,
    ``normalize_activations``, ``sae_file`` (the file read); for a named SAE also ``sae_name`` (release/id or
    repo/folder) and ``sae_revision`` (``repo@commit/folder``, the cached revision read); for a transcoder also
    ``d_out`` and ``hook_name_out``. The explained variance is of ``targets`` (the vectors at the output point; the
    golds for an SAE; None for a transcoder given no targets). ``model_config``: the model's config.json, for a route
    splicing where its SAE's files say (``route_points``); without it the route splices the residual stream.
    """
    from causal_kl.sae import explained_variance

    golds = np.asarray(golds, dtype=np.float32)
    if golds.ndim != 2 or len(golds) == 0:
        raise ValueError(f"expected golds [n >= 1, d], got {golds.shape}")
    sae = load_route_sae(entry, layer, golds.shape[1] if model_config is None else None, device, source, model_config)
    recon, fired = run_sae(sae, golds, int(entry.get("batch_size") or 4096))
    n_dead = int((fired == 0).sum())
    if targets is None and not sae.transcoder:
        targets = golds
    stats = {
        "n": int(len(golds)),
        "l0": float(fired.sum()) / len(golds),
        "dead_share": n_dead / sae.d_sae,
        "n_dead": n_dead,
        "d_sae": sae.d_sae,
        "d_in": sae.d_in,
        "architecture": sae.architecture,
        "hook_name": sae.hook_name,
        "explained_variance": None if targets is None else explained_variance(targets, recon),
        "k": sae.k,
        "apply_b_dec_to_input": sae.apply_b_dec_to_input,
        "normalize_activations": sae.normalize_activations,
        "sae_file": sae.source,
    }
    if sae.transcoder:
        stats.update(d_out=sae.d_out, hook_name_out=sae.hook_name_out)
    if "hub" in sae.metadata:  # a named SAE: how the route named it and the cached revision read
        stats.update(sae_name=sae.metadata["name"], sae_revision=sae.metadata["hub"])
    return recon, stats
