"""SAELens' ``dictionary_learning_1``, ``qwen_scope``, ``goodfire`` and ``deepseek_r1`` formats, read as SAELens'
loaders read them (``sae_lens/loading/pretrained_sae_loaders.py``, sae-lens 6.54); ``temporal`` refused.

Each format is turned into the SAELens-style settings its loader builds (then normalised by
``causal_kl.sae_format.read_saelens_cfg``, so a release's ``config_overrides`` go on top as SAELens applies them)
and its tensors renamed to SAELens' (``W_enc [d_in, d_sae]``, ``b_enc``, ``W_dec [d_sae, d_in]``, ``b_dec``, ...):

``dictionary_learning`` (SAELens' ``dictionary_learning_1``; Sam Marks' ``dictionary_learning`` library, the SAEBench
    suites, andyrdt's SAEs): a folder with ``config.json`` (``trainer``: ``dict_class``, ``activation_dim``,
    ``dict_size``, ``layer``, ``lm_name``, ``k``, ``submodule_name``) and ``ae.pt`` (a state dict). By ``dict_class``:
    ``AutoEncoder`` standard; ``GatedAutoEncoder`` gated (``gate_bias``, ``mag_bias``, ``r_mag``); ``AutoEncoderTopK``
    TopK with the trainer's ``k`` (the ``threshold`` it also saves is not used, as SAELens does); ``BatchTopKSAE`` and
    ``MatryoshkaBatchTopKSAE`` JumpReLU with their one ``threshold`` (a scalar, broadcast to every latent: their
    inference-time encode); ``JumpReluAutoEncoder`` JumpReLU without ``b_dec`` subtracted. Tensors: ``W_enc`` or
    ``encoder.weight.T``, ``W_dec`` or ``decoder.weight.T``, ``b_dec`` or ``bias`` or ``decoder_bias``, ``b_enc`` or
    ``encoder.bias``. No normalisation. A ``dict_class`` not in that list (SAELens would read it as a standard SAE,
    e.g. ``AutoEncoderNew``, which subtracts no ``b_dec``) is refused. The hook: SAELens names every one
    ``blocks.{trainer.layer}.hook_resid_post``; where ``trainer.submodule_name`` says ``attn_out_layer_L`` /
    ``mlp_out_layer_L`` / ``embed`` (Sam Marks' pythia-70m dictionaries) that hook is taken instead
    (``hook_attn_out``/``hook_mlp_out``; the embeddings are no point: refused where the hook is checked).
    The catalogue's 838 (sae-lens 6.54) are all at ``hook_resid_post`` by their ids: SAEBench's gemma-2-2b suites
    (``topk`` releases: ``AutoEncoderTopK``; ``vanilla``: ``AutoEncoder``; the ``-0107``/``-0108`` ones:
    ``MatryoshkaBatchTopKSAE``, by their folder names), SAEBench's pythia-70m-deduped sweeps (``standard`` and
    ``panneal``: ``AutoEncoder``; ``gated``: ``GatedAutoEncoder``; ``topk``: ``AutoEncoderTopK``) and andyrdt's
    Llama-3.1-8B-Instruct, Qwen2.5-7B-Instruct and gpt-oss-20b SAEs (their ``config.json`` says the class; not
    checked here, no copy of them being at hand); every class above is read.
``qwen_scope``: one file per layer, ``layer{L}.sae.pt`` (``W_enc [d_sae, d_in]``, ``W_dec [d_in, d_sae]``, both
    transposed; ``b_enc``, ``b_dec``), TopK, no ``b_dec`` subtracted, no normalisation, ``blocks.L.hook_resid_post``;
    ``k`` and the width are in the repo's name, ``Qwen/SAE-Res-{model}-W{N}K-L0_{k}``, read from the path (the hub
    cache's ``models--Qwen--SAE-Res-...`` folder or a folder of that name).
``goodfire``: a ``.pt``/``.pth`` state dict (``encoder_linear``/``decoder_linear`` weight and bias, transposed),
    standard, no ``b_dec`` subtracted, at ``blocks.L.hook_resid_post`` with L from the file name (``...-SAE-l19.pth``).
``deepseek_r1``: a ``.pt`` state dict (``encoder``/``decoder`` weight and bias), standard, no ``b_dec`` subtracted,
    ``blocks.L.hook_resid_post`` from the file name (``...-SAE-l19.pt``). SAELens runs it in bfloat16; here, as every
    SAE, in float32.
``temporal``: refused (``REFUSED``).

Pickles: read by ``torch.load(weights_only=True)`` only. Before that, and at parse time without torch,
``torch_state_shapes`` reads the pickle's opcodes with an allow-list of the globals a state dict of tensors needs (the
ones ``weights_only`` allows for it): a pickle that needs any other is refused in one line, naming the global.

``catalogue_site``: what a catalogue entry alone says of an SAE of these formats (its hook, its architecture).
"""

from __future__ import annotations

import codecs
import collections
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from causal_kl.errors import CausalKLError
from causal_kl.io import read_json
from causal_kl import sae_format as fmt

DL_CFG = "config.json"
DL_WEIGHTS = "ae.pt"
TORCH_SUFFIXES = (".pt", ".pth")
THE_FILE = ""
"""``causal_kl.sae_hub.FORMAT_FILES`` entry of a one-file format: the release's path is the weights file itself."""

FORMATS = ("dictionary_learning", "qwen_scope", "goodfire", "deepseek_r1")
CONVERTERS = {"dictionary_learning_1": "dictionary_learning", "qwen_scope": "qwen_scope", "goodfire": "goodfire",
              "deepseek_r1": "deepseek_r1"}
"""SAELens' ``conversion_func`` -> the format read here."""
FORMAT_FILES = {"dictionary_learning": (DL_CFG, DL_WEIGHTS), "qwen_scope": (THE_FILE,), "goodfire": (THE_FILE,),
                "deepseek_r1": (THE_FILE,)}

TEMPORAL_FILES = ("conf.yaml", "latest_ckpt.safetensors")
REFUSED = {
    "temporal": ("a temporal SAE (SAELens' TemporalSAE) attends over the context's earlier activations at its hook, so "
                 "its reconstruction of a position is no function of that position's vector, which a splice needs",
                 "use a per-position SAE of the same hook"),
}
"""SAELens' ``conversion_func`` refused with a reason, and the fix."""

DL_CLASSES = {
    "AutoEncoder": ("standard", True),
    "GatedAutoEncoder": ("gated", True),
    "AutoEncoderTopK": ("topk", True),
    "BatchTopKSAE": ("jumprelu", True),
    "MatryoshkaBatchTopKSAE": ("jumprelu", True),
    "JumpReluAutoEncoder": ("jumprelu", False),
}
"""``dictionary_learning``'s ``dict_class`` -> (SAELens' architecture, ``apply_b_dec_to_input``), as its loader maps them."""

_QWEN_FILE = re.compile(r"^layer(\d+)\.sae\.pt$")
_QWEN_REPO = re.compile(r"SAE-Res-(.+)-W(\d+)K-L0_(\d+)")
_FILE_LAYER = re.compile(r"[-_]l(\d+)$", re.IGNORECASE)
_DL_SUBMODULE = re.compile(r"^(resid_post|attn_out|mlp_out)_layer_?(\d+)$")


# ------------------------------------------------------------------------------- pickles, torch-free
@dataclass(frozen=True)
class TensorInfo:
    """A tensor of a pickled state dict, its data not read."""

    shape: tuple[int, ...]
    dtype: str


_STORAGES = {"FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
             "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16",
             "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool"}
_DTYPES = {"float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool", "float", "half",
           "double", "long", "int"}


class _NeedsMore(Exception):
    pass


def _rebuild_tensor(storage, offset, size, stride, *rest):
    return TensorInfo(tuple(int(s) for s in size), storage)


class _HeaderUnpickler(pickle.Unpickler):
    """Unpickles a ``torch.save`` pickle into ``TensorInfo``s: only the globals a state dict of tensors needs."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return lambda data, *rest: data
        if module == "torch" and name in _STORAGES:
            return _STORAGES[name]
        if (module, name) == ("torch", "Size"):
            return tuple
        if (module, name) == ("torch", "device"):
            return str
        if module == "torch" and name in _DTYPES:
            return name
        if (module, name) == ("_codecs", "encode"):
            return codecs.encode
        raise _NeedsMore(f"{module}.{name}")

    def persistent_load(self, pid):
        # ('storage', <storage type>, key, location, numel[, view metadata]): zip and legacy torch.save alike
        if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and pid[1] in _STORAGES.values():
            return pid[1]
        raise _NeedsMore(f"persistent id {str(pid)[:60]}")


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def read_torch_pickle(path: str | Path) -> Any:
    """What a ``torch.save`` file holds, tensors as ``TensorInfo`` (no data read, no torch imported); a pickle that
    needs a global outside the allow-list (``torch.load(weights_only=True)`` refuses such pickles) is one line."""
    path = Path(path)
    fix = "re-save it as a plain state dict of tensors (torch.save(module.state_dict(), path)) or as safetensors"
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                member = next((n for n in z.namelist() if n == "data.pkl" or n.endswith("/data.pkl")), None)
                if member is None:
                    raise ValueError("a zip without data.pkl")
                with z.open(member) as f:
                    return _HeaderUnpickler(f).load()
        with open(path, "rb") as f:  # torch.save's legacy format: magic, protocol, sys info, then the object
            u = _HeaderUnpickler(f)
            if u.load() != _LEGACY_MAGIC:
                raise ValueError("not a torch.save file")
            u.load(), u.load()
            return u.load()
    except _NeedsMore as e:
        raise CausalKLError(path, "weights_only", f"a pickle that torch.load(weights_only=True) refuses: it needs {e}, "
                            "which may run code", fix) from None
    except (OSError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile, TypeError, IndexError,
            AttributeError, KeyError) as e:
        raise CausalKLError(path, None, f"not a readable torch.save file ({str(e).splitlines()[0] if str(e) else type(e).__name__})",
                            "download the file again") from None


def torch_state_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of the tensors of a pickled state dict (``read_torch_pickle``)."""
    obj = read_torch_pickle(path)
    if not isinstance(obj, dict):
        raise CausalKLError(path, None, f"holds a {type(obj).__name__}, not a state dict of tensors",
                            "give the file of the SAE's state dict")
    return {str(k): v.shape for k, v in obj.items() if isinstance(v, TensorInfo)}


# ---------------------------------------------------------------------------------------- the files
def _temporal(path: Path) -> CausalKLError:
    why, fix = REFUSED["temporal"]
    return CausalKLError(path, "architecture", why, fix)


def locate(p: Path) -> tuple[str, Path] | None:
    """``(format, file)`` when an existing path holds an SAE of these formats (``dictionary_learning``: its folder;
    the others: the weights file), None when it holds none of them; a temporal SAE or a ``.pt`` state dict of no
    format known here is one line."""
    if p.is_file():
        if p.name == DL_WEIGHTS:
            return "dictionary_learning", p.parent
        if p.name in TEMPORAL_FILES and all((p.parent / n).exists() for n in TEMPORAL_FILES):
            raise _temporal(p)
        if p.suffix not in TORCH_SUFFIXES:
            return None
        if _QWEN_FILE.match(p.name):
            return "qwen_scope", p
        names = set(torch_state_shapes(p))
        if "encoder_linear.weight" in names:
            return "goodfire", p
        if {"encoder.weight", "decoder.weight", "decoder.bias"} <= names:
            return "deepseek_r1", p
        raise CausalKLError(p, None, f"a state dict of no SAE format read here (tensors {', '.join(sorted(names)[:6]) or 'none'})",
                            "give a dictionary_learning folder (config.json + ae.pt), a Qwen-Scope layer{L}.sae.pt, a "
                            "Goodfire or DeepSeek-R1 SAE file, or an SAE in SAELens' format")
    if p.is_dir():
        if (p / DL_WEIGHTS).exists():
            return "dictionary_learning", p
        if all((p / n).exists() for n in TEMPORAL_FILES):
            raise _temporal(p)
    return None


def weights_file(format: str, file: Path) -> Path:
    return Path(file) / DL_WEIGHTS if format == "dictionary_learning" else Path(file)


def config_file(format: str, file: Path) -> Path:
    """The file whose settings are read (errors about them name it): ``config.json``, or the weights file."""
    return Path(file) / DL_CFG if format == "dictionary_learning" else Path(file)


def _hook_from_name(file: Path) -> str | None:
    m = _FILE_LAYER.search(file.stem)
    return fmt.resid_post_hook(int(m.group(1))) if m else None


def _dl_settings(folder: Path) -> dict[str, Any]:
    cfg_path = folder / DL_CFG
    if not cfg_path.exists():
        raise CausalKLError(cfg_path, DL_CFG, "not found", "a dictionary_learning SAE folder holds config.json and ae.pt")
    raw = read_json(cfg_path, fmt.SAE_CONFIG_FIX)
    trainer = raw.get("trainer")
    if not isinstance(trainer, dict):
        raise CausalKLError(cfg_path, "trainer", "missing (dictionary_learning's config.json keeps the SAE's settings there)",
                            "give the config.json dictionary_learning's trainer wrote beside ae.pt")
    cls = trainer.get("dict_class")
    if cls not in DL_CLASSES:
        raise CausalKLError(cfg_path, "trainer.dict_class", f"{cls!r} is not a dictionary class SAELens' dictionary_learning_1 "
                            "loader reads right", f"use an SAE of class {', '.join(DL_CLASSES)}")
    arch, apply_b_dec = DL_CLASSES[cls]
    for key in ("activation_dim", "dict_size"):
        if trainer.get(key) is None:
            raise CausalKLError(cfg_path, f"trainer.{key}", "missing", "give the config.json dictionary_learning wrote")
    layer = trainer.get("layer")
    hook = fmt.resid_post_hook(int(layer)) if layer is not None else None
    sub = str(trainer.get("submodule_name") or "")
    if m := _DL_SUBMODULE.match(sub):
        tl = {"resid_post": "hook_resid_post", "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out"}[m.group(1)]
        hook = f"blocks.{int(m.group(2))}.{tl}"
    elif sub == "embed":
        hook = "hook_embed"
    settings = {"architecture": arch, "d_in": trainer["activation_dim"], "d_sae": trainer["dict_size"],
                "apply_b_dec_to_input": apply_b_dec, "normalize_activations": "none", "hook_name": hook,
                "model_name": str(trainer.get("lm_name") or "").split("/")[-1] or None, "dict_class": cls}
    if arch == "topk":
        settings["k"] = trainer.get("k")
    return settings


def _qwen_settings(file: Path) -> dict[str, Any]:
    layer = int(_QWEN_FILE.match(file.name).group(1))
    repo = next((m for q in reversed(file.parent.parts) if (m := _QWEN_REPO.search(q))), None)
    if repo is None:
        raise CausalKLError(file, "k", "a Qwen-Scope SAE's k and width are in its repo's name "
                            "(Qwen/SAE-Res-{model}-W{N}K-L0_{k}), and no folder above the file is named so",
                            "keep the file under a folder named after its repo (as the Hugging Face cache does), or name "
                            "it by release + sae_id or repo + folder")
    return {"architecture": "topk", "k": int(repo.group(3)), "d_sae": int(repo.group(2)) * 1024,
            "apply_b_dec_to_input": False, "normalize_activations": "none",
            "hook_name": fmt.resid_post_hook(layer), "hf_hook_name": f"model.layers.{layer}",
            "model_name": f"Qwen/{repo.group(1)}"}


def settings(format: str, file: Path, overrides: dict | None = None) -> tuple[dict, dict]:
    """``(raw, cfg)``: the SAELens-style settings SAELens' loader builds for the SAE (``raw``, with a release's
    ``config_overrides`` on top) and the same normalised by ``causal_kl.sae_format.read_saelens_cfg`` (``cfg``)."""
    file = Path(file)
    if format == "dictionary_learning":
        raw = _dl_settings(file)
    elif format == "qwen_scope":
        raw = _qwen_settings(file)
    elif format in ("goodfire", "deepseek_r1"):
        raw = {"architecture": "standard", "apply_b_dec_to_input": False, "normalize_activations": "none",
               "hook_name": _hook_from_name(file)}
    else:
        raise ValueError(f"not a format of this module: {format!r}")
    raw = {**raw, **(overrides or {})}
    return raw, fmt.read_saelens_cfg(raw, config_file(format, file))


def rename(format: str, tensors: dict, arch: str, transpose: Callable = lambda v: tuple(reversed(v))) -> dict:
    """The tensors (or their shapes) under SAELens' names, as its loader renames them; ``transpose`` turns a stored
    ``[out, in]`` weight into ``W_enc``/``W_dec``'s layout (a shape by default, an array for the loader)."""
    t = dict(tensors)
    out: dict = {}
    if format == "dictionary_learning":
        if "W_enc" in t or "encoder.weight" in t:
            out["W_enc"] = t["W_enc"] if "W_enc" in t else transpose(t["encoder.weight"])
        if "W_dec" in t or "decoder.weight" in t:
            out["W_dec"] = t["W_dec"] if "W_dec" in t else transpose(t["decoder.weight"])
        b_dec = next((n for n in ("b_dec", "bias", "decoder_bias") if n in t), None)
        if b_dec is not None:
            out["b_dec"] = t[b_dec]
        if "b_enc" in t or "encoder.bias" in t:
            out["b_enc"] = t["b_enc"] if "b_enc" in t else t["encoder.bias"]
        for theirs, ours in (("mag_bias", "b_mag"), ("gate_bias", "b_gate"), ("r_mag", "r_mag")):
            if theirs in t:
                out[ours] = t[theirs]
        if "threshold" in t and arch == "jumprelu":  # AutoEncoderTopK saves one too; its encode never reads it
            out["threshold"] = t["threshold"]
        return out
    names = {"qwen_scope": ("W_enc", "W_dec", "b_enc", "b_dec"),
             "goodfire": ("encoder_linear.weight", "decoder_linear.weight", "encoder_linear.bias", "decoder_linear.bias"),
             "deepseek_r1": ("encoder.weight", "decoder.weight", "encoder.bias", "decoder.bias")}[format]
    for ours, theirs in zip(("W_enc", "W_dec", "b_enc", "b_dec"), names):
        if theirs in t:
            out[ours] = transpose(t[theirs]) if ours.startswith("W_") else t[theirs]
    return out


def read_files(format: str, file: Path, overrides: dict | None = None) -> tuple[dict, dict[str, tuple[int, ...]], Path]:
    """Parse time, without torch: ``(cfg, shapes under SAELens' names, the weights file)``; a ``dictionary_learning``
    scalar threshold is given the shape ``[d_sae]`` it is broadcast to."""
    _, cfg = settings(format, file, overrides)
    weights = weights_file(format, file)
    if not weights.exists():
        raise CausalKLError(weights, weights.name, "not found", "a dictionary_learning SAE folder holds config.json and ae.pt")
    shapes = rename(format, torch_state_shapes(weights), cfg["architecture"])
    if shapes.get("threshold") == () and len(shapes.get("W_enc", ())) == 2:
        shapes["threshold"] = (shapes["W_enc"][1],)
    return cfg, shapes, weights


# ------------------------------------------------------------------------------------------ loading
def load(format: str, file: Path, cfg_overrides: dict | None = None):
    """The SAE (``causal_kl.sae.SparseAutoencoder``, float32, CPU) of a file of these formats."""
    import torch

    from causal_kl.sae import SparseAutoencoder

    raw, cfg = settings(format, file, cfg_overrides)
    weights = weights_file(format, file)
    if not weights.exists():
        raise CausalKLError(weights, weights.name, "not found", "a dictionary_learning SAE folder holds config.json and ae.pt")
    torch_state_shapes(weights)  # the allow-list check the parse-time check makes: the same one line
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CausalKLError(weights, "weights_only", f"a pickle that torch.load(weights_only=True) refuses "
                            f"({str(e).splitlines()[0][:200]})", "re-save it as a plain state dict of tensors or as safetensors") from None
    tensors = rename(format, {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}, cfg["architecture"],
                     transpose=lambda w: w.T)
    arch = cfg["architecture"]
    fmt.check_required_tensors(tensors, arch, weights)
    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in tensors.items()}
    d_in, d_sae = tensors["W_enc"].shape if tensors["W_enc"].ndim == 2 else (None, None)
    for name, actual in (("d_in", d_in), ("d_sae", d_sae)):
        if cfg[name] is not None and actual is not None and cfg[name] != actual:
            raise CausalKLError(weights, "W_enc", f"shape {tuple(tensors['W_enc'].shape)} disagrees with {name}={cfg[name]} "
                                f"({config_file(format, file).name})", "download the SAE's files again")
    if "threshold" in tensors and tensors["threshold"].ndim == 0:
        tensors["threshold"] = tensors["threshold"].expand(int(d_sae)).clone()
    gated = {n: tensors[n] for n in fmt.GATED_TENSORS} if arch == "gated" else {}
    return SparseAutoencoder(
        W_enc=tensors["W_enc"], b_enc=None if gated else tensors["b_enc"], W_dec=tensors["W_dec"], b_dec=tensors["b_dec"],
        **gated, threshold=tensors.get("threshold") if arch == "jumprelu" else None, architecture=arch, k=cfg["k"],
        apply_b_dec_to_input=cfg["apply_b_dec_to_input"], normalize_activations=cfg["normalize_activations"],
        hook_name=cfg["hook_name"], hf_hook_name=cfg["hf_hook_name"], source=str(config_file(format, file)),
        metadata={"format": format, "model_name": cfg["model_name"], "cfg": raw})


# ---------------------------------------------------------------------------------- the catalogue
def catalogue_site(release_info: dict, sae_entry: dict) -> dict[str, str | None]:
    """What an entry of SAELens' ``pretrained_saes.yaml`` alone says of an SAE of these formats (``release_info``: the
    release's dict, ``sae_entry``: one of its ``saes``): ``format`` (None: not one of these), ``hook_name`` (SAELens'
    name) and ``architecture`` where the catalogue and the id tell them, None where only the files do (a
    ``dictionary_learning`` SAE's class is in its ``config.json``)."""
    conv = release_info.get("conversion_func")
    path, sae_id = str(sae_entry.get("path", "")), str(sae_entry.get("id", ""))
    overrides = release_info.get("config_overrides") or {}
    hook = arch = None
    if conv == "dictionary_learning_1":
        m = re.search(r"(?:^|/)resid_post_layer_(\d+)", path) or re.match(r"^blocks\.(\d+)\.hook_resid_post", sae_id)
        hook = fmt.resid_post_hook(int(m.group(1))) if m else None
    elif conv == "qwen_scope":
        m = _QWEN_FILE.match(Path(path).name)
        hook, arch = (fmt.resid_post_hook(int(m.group(1))) if m else None), "topk"
    elif conv in ("goodfire", "deepseek_r1"):
        hook, arch = _hook_from_name(Path(path)), "standard"
    elif conv == "temporal":
        m = re.search(r"layer_(\d+)", path)
        hook, arch = (fmt.resid_post_hook(int(m.group(1))) if m else None), "temporal"
    else:
        return {"format": None, "hook_name": None, "architecture": None}
    if overrides.get("hook_name"):
        hook = str(overrides["hook_name"])
    return {"format": CONVERTERS.get(conv, conv), "hook_name": hook, "architecture": arch}

