"""Loading a causal LM and finding the parts the patch engine needs.

One loader serves every family of ``causal_kl.families`` (Gemma-3 and its multimodal
``Gemma3ForConditionalGeneration``, whose text decoder sits under ``model.language_model``;
Gemma-2, Llama, Mistral, Qwen2/3, GPT-2, GPT-NeoX/Pythia): the family's adapter says where each
part is. What the rest of the package sees is a ``LoadedModel``: the decoder blocks and their
self-attention modules, the final norm, the LM head, the embeddings, the rotary module (None
where positions enter at the input), each block's attention type, the final-logit soft-cap, and
the text config. The attention implementation is sdpa where transformers has it for the model's
class, else eager, unless ``model.attn_implementation`` names another it offers.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from causal_kl import families
from causal_kl.errors import CausalKLError
from causal_kl.fast_load import SAFETENSORS_TORCH, FastLoadUnsupported, fast_from_pretrained, model_class
from causal_kl.hooks import RESID_POST

log = logging.getLogger(__name__)

DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}


@dataclass
class LoadedModel:
    """A causal LM and handles on its parts.

    ``layers[i]`` is decoder block i; the design's layer L is the output of ``layers[L]``.
    """

    model: nn.Module
    decoder: nn.Module  # the text decoder: embeddings, blocks, final norm (and rotary module), per its family
    layers: nn.ModuleList
    final_norm: nn.Module
    lm_head: nn.Module
    embed_tokens: nn.Module
    rotary_emb: nn.Module | None  # None: the family's blocks never read positions (GPT-2)
    text_config: Any
    architecture: str
    path: str
    tokenizer: Any = None
    layer_types: list[str] | None = None
    final_logit_softcapping: float | None = None
    extra: dict = field(default_factory=dict)
    family: families.Family = families.FAMILIES[0]
    embed_positions: nn.Module | None = None  # learned absolute position embeddings added at the input (GPT-2)

    def attention(self, i: int) -> nn.Module:
        """Block i's self-attention module (``self_attn``, GPT-2's ``attn``, GPT-NeoX's ``attention``)."""
        return getattr(self.layers[i], self.family.attention)

    @property
    def attn_implementation(self) -> str:
        """The attention implementation the model's own forward uses (the clean pass, the naive path)."""
        return str(getattr(self.model.config, "_attn_implementation", None) or "eager")

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def d_model(self) -> int:
        return int(self.text_config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def sliding_window(self) -> int | None:
        return getattr(self.text_config, "sliding_window", None)

    def layer_type(self, i: int) -> str:
        return self.layer_types[i] if self.layer_types else "full_attention"

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm, LM head and (where the model's own forward applies it) soft-cap: ``[..., d] -> [..., vocab]``."""
        out = self.lm_head(self.final_norm(hidden))
        if self.final_logit_softcapping is not None:
            cap = self.final_logit_softcapping
            out = torch.tanh(out / cap) * cap
        return out

    def hook_module(self, layer: int, hook: str = RESID_POST) -> tuple[nn.Module, str]:
        """``(module, side)`` holding ``hook`` in block ``layer``: the block itself and ``"out"`` for resid_post, else the
        family's module and ``"in"`` (its first input) or ``"out"`` (its output). One line when the family lacks it."""
        where = families.check_hook(self.family, self.text_config, hook, self.path, "hook", self.architecture)
        if where is None:
            return self.layers[layer], "out"
        module = families.resolve(self.layers[layer], where.module)
        if module is None:
            raise CausalKLError(self.path, "hook", f"block {layer} of {self.architecture} has no module {where.module} (hook {hook})",
                                "use a model whose blocks are laid out as transformers' own for its family")
        return module, where.side

    def hook_width(self, hook: str = RESID_POST) -> int:
        """The width of a hook's vectors: d_model, or heads x head_dim for attn_z; mlp_in is d_model too."""
        if hook == "attn_z":
            cfg = self.text_config
            head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
            return int(cfg.num_attention_heads * head_dim)
        return self.d_model

    def check_layer(self, layer: int, source: str = "config") -> None:
        if not 0 <= layer < self.n_layers:
            raise CausalKLError(
                source, "model.layer",
                f"layer {layer} is out of range for {self.path} ({self.n_layers} decoder blocks, 0..{self.n_layers - 1})",
                f"set model.layer to a block index below {self.n_layers}",
            )



@contextlib.contextmanager
def at_hook(loaded: LoadedModel, layer: int, hook: str, fn: Callable[[torch.Tensor], torch.Tensor | None]):
    """While inside: every forward through block ``layer`` calls ``fn(activation)`` at ``hook``
    (``[batch, seq, width]``). ``fn`` returns None to leave the activation as it is (record it), or a tensor to
    put in its place (splice). Input hooks replace the module's first input, output hooks its output (the first
    element of a tuple)."""
    module, side = loaded.hook_module(layer, hook)
    if hook == "resid_mid":
        with _at_resid_mid(loaded, layer, fn):
            yield
        return
    if side == "in":
        def pre_hook(_mod, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            new = fn(x)
            if new is None:
                return None
            if args:
                return (new, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": new}

        handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True)
    else:
        def hook(_mod, _inp, out):
            x = out[0] if isinstance(out, tuple) else out
            new = fn(x)
            if new is None:
                return None
            return (new, *out[1:]) if isinstance(out, tuple) else new

        handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def _at_resid_mid(loaded: LoadedModel, layer: int, fn: Callable[[torch.Tensor], torch.Tensor | None]):
    """``resid_mid`` = the block's input + the attention's output, the residual stream between the two sublayers.

    The block keeps that sum in a local variable (its ``residual``) and also feeds it to the MLP's norm, so no
    module's input or output *is* it: replacing the norm's input would change what the MLP reads but not what the
    residual carries on. So it is read and replaced at the attention's output (``attn_out``, where the block adds
    it): ``fn(input + attn_out)``, and a replacement ``R`` puts ``R - input`` there, so the block's sum is ``R``
    for both the residual and the MLP, as TransformerLens' ``hook_resid_mid`` replaces it."""
    attn, side = loaded.hook_module(layer, "attn_out")
    if side != "out":
        raise CausalKLError(loaded.path, "hook", f"{loaded.architecture}: resid_mid needs the attention's output",
                            "use a family whose attention output joins the residual stream (families.py)")
    block_in: list[torch.Tensor] = []

    def take_input(_mod, args, kwargs):
        block_in[:] = [args[0] if args else kwargs["hidden_states"]]

    def at_attn_out(_mod, _inp, out):
        a = out[0] if isinstance(out, tuple) else out
        x = block_in[0]
        new = fn(x + a)
        if new is None:
            return None
        new = new - x
        return (new, *out[1:]) if isinstance(out, tuple) else new

    handles = [loaded.layers[layer].register_forward_pre_hook(take_input, with_kwargs=True),
               attn.register_forward_hook(at_attn_out)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise CausalKLError("config", "device", "cuda was asked for but no CUDA device is visible",
                            "set device: cpu or auto, or run on a GPU node")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise CausalKLError("config", "dtype", f"unknown dtype {dtype!r}", f"use one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def load_model(
    path: str | Path,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    attn_implementation: str | None = families.AUTO,
    with_tokenizer: bool = True,
) -> LoadedModel:
    """Load a causal LM checkpoint (local directory or hub id) for patching; eval mode, no grad.

    ``attn_implementation``: ``auto`` = sdpa where transformers has it for the model's class, else
    eager (Gemma-2); another name must be one transformers offers for that class (one line if not).
    A model of a family ``causal_kl.families`` does not list is refused before any weight is read.

    On a GPU, a local safetensors checkpoint is read straight onto ``device`` by
    ``fast_from_pretrained`` (same weights, bit for bit, as ``from_pretrained``: 54 GB in 3.1 s on
    an H200 against 10.3 s for ``from_pretrained(device_map="cuda")``); anything it does not
    read goes through ``from_pretrained`` and the log says why. On the CPU ``from_pretrained``
    is used (it maps the file, no copy: 0.05 s against 0.7 s for 0.75 GB); the environment
    variable ``CAUSAL_KL_FAST_LOAD`` = ``auto`` (default) | ``1`` (always fast) | ``0`` (never)
    overrides. Every load logs one line
    ``causal-kl: loaded model <path> (<dtype>, <device>) in X s [load #N in pid P]``.
    ``get_model`` is the cached way in.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    global _LOAD_COUNT
    t0 = time.perf_counter()
    path = str(path)
    local = Path(path).exists()
    if local and not (Path(path) / "config.json").exists():
        raise CausalKLError(path, "config.json", "not a Hugging Face model directory",
                            "point model.path at a folder written by save_pretrained (config.json + weights)")
    try:
        hf_config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise CausalKLError(path, "model.path", f"cannot read a model config ({str(e).splitlines()[0]})",
                            "give a local save_pretrained folder, or a hub id with network access") from e
    model_type = getattr(hf_config, "model_type", None)
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise CausalKLError(
            path, "config.json model_type",
            f"'{model_type}' ({(getattr(hf_config, 'architectures', None) or ['?'])[0]}) is not a causal language model",
            f"point model.path at a decoder-only causal LM ({families.supported()})",
        )
    where = str(Path(path) / "config.json") if local else path
    families.check_family(hf_config.to_dict(), where, path)
    attn_implementation = families.choose_attn_implementation(model_class(hf_config), attn_implementation, where)
    torch_dtype = resolve_dtype(dtype)
    dev = resolve_device(device) if isinstance(device, str) else device
    model = None
    fast = os.environ.get("CAUSAL_KL_FAST_LOAD", "auto")
    if fast == "0":
        log.info("causal-kl: fast load off (CAUSAL_KL_FAST_LOAD=0): loading %s with from_pretrained", path)
    elif fast == "auto" and dev.type == "cpu":
        log.info("causal-kl: loading %s with from_pretrained (on the CPU it maps the safetensors file instead of "
                 "copying it, which is faster; CAUSAL_KL_FAST_LOAD=1 forces the fast load)", path)
    else:
        try:
            model = fast_from_pretrained(path, hf_config, torch_dtype, dev, attn_implementation)
        except FastLoadUnsupported as e:
            log.info("causal-kl: fast load not used for %s (%s): loading with from_pretrained", path, e)
        except CausalKLError:
            raise
        except Exception as e:  # noqa: BLE001 - an unforeseen layout must not stop a load from_pretrained can do
            log.warning("causal-kl: fast load of %s failed (%s: %s): loading with from_pretrained", path,
                        type(e).__name__, " ".join(str(e).split())[:300])
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    if model is None:
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, attn_implementation=attn_implementation)
        except (ValueError, ImportError) as e:
            if attn_implementation in ("eager", "sdpa"):
                raise
            raise CausalKLError(where, "model.attn_implementation",
                                f"transformers cannot load {path} with {attn_implementation} here ({' '.join(str(e).split())[:200]})",
                                "set model.attn_implementation: auto (sdpa where offered, else eager)") from e
        model.to(dev)
    model.eval()
    model.requires_grad_(False)
    _experts_for_dtype(model, torch_dtype, path)
    loaded = wrap_model(model, path)
    if with_tokenizer:
        try:
            loaded.tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as e:
            raise CausalKLError(path, "tokenizer", f"no tokenizer found ({str(e).splitlines()[0]})",
                                "save the tokenizer beside the model (tokenizer.save_pretrained)") from e
    with _REGISTRY_LOCK:
        _LOAD_COUNT += 1
        n = _LOAD_COUNT
        _LOADS.append({"model": path, "dtype": str(torch_dtype).removeprefix("torch."), "device": str(dev),
                       "seconds": round(time.perf_counter() - t0, 3)})
    log.info("causal-kl: loaded model %s (%s, %s) in %.2f s [load #%d in pid %d]", path, str(torch_dtype).removeprefix("torch."),
             dev, time.perf_counter() - t0, n, os.getpid())
    log.info("causal-kl: %s is %s (%s family), attention implementation %s", path, loaded.architecture, loaded.family.name,
             loaded.attn_implementation)
    return loaded


def _experts_for_dtype(model: nn.Module, dtype: torch.dtype, path: str) -> None:
    """Mixture-of-experts blocks (Qwen3-MoE, Qwen3.5-MoE, gpt-oss) run their experts through transformers'
    ``grouped_mm`` by default, which has no float64 kernel: a float64 model runs them with the eager loop (the same
    arithmetic, expert by expert)."""
    impl = getattr(model.config, "_experts_implementation", None)
    if dtype == torch.float64 and impl not in (None, "eager") and hasattr(model, "set_experts_implementation"):
        model.set_experts_implementation("eager")
        log.info("causal-kl: %s runs its experts with the eager implementation (%s has no float64 kernel)", path, impl)


def load_count() -> int:
    """How many models this process has loaded (``load_model`` calls that succeeded)."""
    return _LOAD_COUNT


def load_records() -> list[dict]:
    """One record per successful ``load_model`` call in this process, in order (model, dtype, device, seconds)."""
    with _REGISTRY_LOCK:
        return [dict(r) for r in _LOADS]


# ----------------------------------------------------------------------------- resident models
_REGISTRY_LOCK = threading.RLock()
_LOAD_COUNT = 0
_LOADS: list[dict] = []  # one record per load_model call (the model server reports them as load events)
_RESIDENT: "OrderedDict[tuple, LoadedModel]" = OrderedDict()  # least recently used first
_USAGE: list[dict] = []  # models handed out since the last take_model_usage()


def get_model(
    path: str | Path,
    dtype: str = "float32",
    device: str = "cpu",
    attn_implementation: str | None = families.AUTO,
    with_tokenizer: bool = True,
) -> LoadedModel:
    """The process's resident copy of a model, loaded on first use (``load_model``), shared by every later call.

    Keyed by (resolved path, fingerprint of config.json + weight files, dtype, device,
    attention implementation): rewriting the checkpoint gives a new key and drops the stale
    copy. Before loading another model, resident ones on the same device are evicted (least
    recently used first) while the device cannot hold both: the new model's size, read from its
    safetensors headers, times 1.1, plus a reserve for activations (``CAUSAL_KL_RESERVE_GB``,
    default 4 on a GPU, 2 on the CPU), must fit in what is free (``cuda.mem_get_info`` plus
    torch's cached-but-unused blocks; MemAvailable on the CPU). A hub id (size unknown) evicts
    every model on its device. Callers must not modify the model they get (hooks, weights).
    """
    from causal_kl.checkpoints import resolved, stat_fingerprint

    torch_dtype = resolve_dtype(dtype)
    dev = _canonical_device(resolve_device(device) if isinstance(device, str) else device)
    rpath = resolved(path)
    key = (rpath, stat_fingerprint(rpath), str(torch_dtype).removeprefix("torch."), str(dev), attn_implementation)
    with _REGISTRY_LOCK:
        for k in [k for k in _RESIDENT if k[0] == rpath and k[1] != key[1]]:
            log.info("causal-kl: %s changed on disk: dropping its resident copy (%s, %s)", rpath, k[2], k[3])
            _drop(k)
        loaded = _RESIDENT.get(key)
        if loaded is None:
            _make_room(rpath, torch_dtype, dev)
            loaded = load_model(path, torch_dtype, dev, attn_implementation, with_tokenizer)
            _RESIDENT[key] = loaded
        else:
            _RESIDENT.move_to_end(key)
            if with_tokenizer and loaded.tokenizer is None:
                from transformers import AutoTokenizer

                loaded.tokenizer = AutoTokenizer.from_pretrained(path)
            log.info("causal-kl: reusing resident model %s (%s, %s) [loads so far in pid %d: %d]", path, key[2], key[3],
                     os.getpid(), _LOAD_COUNT)
        _USAGE.append({"path": rpath, "fingerprint": key[1], "dtype": key[2], "device": key[3], "attn_implementation": key[4]})
        return loaded


def resident_models() -> list[dict]:
    """The models this process holds: path, fingerprint, dtype, device, attention implementation."""
    with _REGISTRY_LOCK:
        return [dict(zip(("path", "fingerprint", "dtype", "device", "attn_implementation"), k)) for k in _RESIDENT]


def resident_paths() -> list[str]:
    """The paths of the models this process holds, without waiting for a load in progress (which holds the
    registry lock): what the model server's ``hello`` reports, so that a client is answered during a load."""
    for _ in range(3):
        try:
            return sorted({k[0] for k in tuple(_RESIDENT)})
        except RuntimeError:  # changed while copied: read again
            continue
    return []


def evict_models(device: str | None = None) -> int:
    """Drop resident models (all, or those on ``device``); returns how many."""
    with _REGISTRY_LOCK:
        keys = [k for k in _RESIDENT if device is None or k[3] == device]
        for k in keys:
            _drop(k)
        return len(keys)


def take_model_usage() -> list[dict]:
    """The models ``get_model`` handed out since the last call (the server reports them per request)."""
    with _REGISTRY_LOCK:
        out = list(_USAGE)
        _USAGE.clear()
        return out


def _canonical_device(dev: torch.device) -> torch.device:
    if dev.type == "cuda" and dev.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return dev


def _drop(key: tuple) -> None:
    loaded = _RESIDENT.pop(key)
    del loaded
    gc.collect()
    if key[3].startswith("cuda"):
        torch.cuda.empty_cache()


def _model_bytes(path: str, dtype: torch.dtype) -> int | None:
    from causal_kl.checkpoints import checkpoint_tensors

    try:
        entries = checkpoint_tensors(path)
    except CausalKLError:
        return None
    item = torch.tensor([], dtype=dtype).element_size()
    return sum(e.numel * item if SAFETENSORS_TORCH.get(e.dtype, torch.float32).is_floating_point else e.nbytes
               for e in entries.values())


def _available_bytes(dev: torch.device) -> int:
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return free + torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62


def _make_room(path: str, dtype: torch.dtype, dev: torch.device) -> None:
    on_device = [k for k in _RESIDENT if k[3] == str(dev)]
    if not on_device:
        return
    need = _model_bytes(path, dtype) if Path(path).is_dir() else None
    reserve = float(os.environ.get("CAUSAL_KL_RESERVE_GB", 4 if dev.type == "cuda" else 2)) * 1e9
    for k in on_device:
        if need is not None and need * 1.1 + reserve <= _available_bytes(dev):
            return
        log.info("causal-kl: evicting resident model %s (%s, %s) to make room for %s (%s)", k[0], k[2], k[3], path,
                 f"{need / 1e9:.2f} GB" if need is not None else "size unknown")
        _drop(k)


def model_family(model: nn.Module, path: str | None = None) -> families.Family:
    """The family of a built model (its config's ``model_type``); one line naming the families we patch if none."""
    cfg = model.config.to_dict() if hasattr(model, "config") else {}
    cfg["architectures"] = [type(model).__name__]
    return families.check_family(cfg, path or "<in memory>", path or type(model).__name__)


def find_decoder(model: nn.Module, path: str | None = None, family: families.Family | None = None) -> nn.Module:
    """The module holding the blocks, the final norm and the embeddings, where the model's family keeps it
    (``model``, ``model.language_model``, GPT-2's ``transformer``, GPT-NeoX's ``gpt_neox``)."""
    family = family or model_family(model, path)
    for dotted in family.decoder:
        c = families.resolve(model, dotted)
        if c is not None and isinstance(getattr(c, family.blocks, None), nn.ModuleList) and hasattr(c, family.final_norm):
            return c
    raise CausalKLError(path, "architecture",
                        f"cannot find the decoder blocks of {type(model).__name__} where the {family.name} family keeps them "
                        f"({' or '.join(f'{d}.{family.blocks}' for d in family.decoder)})",
                        "load the checkpoint with the transformers version causal-kl is tested with (5.x)")


def wrap_model(model: nn.Module, path: str = "<in memory>") -> LoadedModel:
    """Find the parts of an already-built HF causal LM, through its family's adapter."""
    family = model_family(model, path)
    decoder = find_decoder(model, path, family)
    lm_head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if lm_head is None:
        lm_head = getattr(model, "lm_head", None)
    if lm_head is None:
        raise CausalKLError(path, "lm_head", f"{type(model).__name__} has no LM head", "load a *ForCausalLM checkpoint")
    text_config = getattr(decoder, "config", None) or model.config
    if hasattr(text_config, "get_text_config"):
        text_config = text_config.get_text_config()
    # the final soft-cap lives in the outer model's forward; read it from the text config
    softcap = getattr(text_config, "final_logit_softcapping", None)
    layers = getattr(decoder, family.blocks)
    loaded = LoadedModel(
        model=model,
        decoder=decoder,
        layers=layers,
        final_norm=getattr(decoder, family.final_norm),
        lm_head=lm_head,
        embed_tokens=getattr(decoder, family.embed_tokens),
        rotary_emb=getattr(decoder, family.rotary, None) if family.rotary else None,
        text_config=text_config,
        architecture=type(model).__name__,
        path=path,
        layer_types=families.layer_types(text_config, len(layers)),
        final_logit_softcapping=softcap,
        family=family,
        embed_positions=getattr(decoder, family.embed_positions) if family.embed_positions else None,
    )
    calibrate_head(loaded)
    return loaded


@torch.no_grad()
def calibrate_head(loaded: LoadedModel, n_tokens: int = 6) -> None:
    """Make ``loaded.logits`` reproduce the model's own final logits.

    The final-logit soft-cap is applied by some wrappers' forward and not by others
    (transformers' Gemma3ForCausalLM applies ``final_logit_softcapping``; its multimodal
    Gemma3ForConditionalGeneration does not). Rather than trust the config, one short forward
    decides: the model's logits are compared with the head applied to the decoder's output,
    with and without the cap. Any other post-processing is an error naming the architecture.
    """
    vocab = int(getattr(loaded.text_config, "vocab_size", 2))
    x = (torch.arange(n_tokens, device=loaded.device) * 7919 % max(vocab - 1, 1) + 1)[None]
    ref = loaded.model(input_ids=x, use_cache=False).logits.float()
    normed = loaded.decoder(input_ids=x, use_cache=False).last_hidden_state
    raw = loaded.lm_head(normed).float()
    options = {None: raw}
    cap = loaded.final_logit_softcapping
    if cap is not None:
        options[cap] = torch.tanh(raw / cap) * cap
    errs = {k: float((v - ref).abs().max()) for k, v in options.items()}
    best = min(errs, key=errs.get)
    scale = float(ref.abs().max()) + 1e-6
    tol = 1e-3 if loaded.dtype in (torch.float32, torch.float64) else 5e-2
    if errs[best] > tol * max(scale, 1.0):
        raise CausalKLError(loaded.path, "architecture",
                            f"{loaded.architecture}'s final logits are not norm -> LM head (-> soft-cap) of its decoder (off by {errs[best]:.3g})",
                            "set patch.method: naive for this model")
    loaded.final_logit_softcapping = best
