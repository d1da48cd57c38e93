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
from causal_kl.checkpoints import SAFETENSORS_DTYPES
from causal_kl.errors import CausalKLError
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
    attn_implementation = families.choose_attn_implementation(_model_class(hf_config), attn_implementation, where)
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


# ----------------------------------------------------------------------------- fast load
class FastLoadUnsupported(Exception):
    """The checkpoint is one the fast loader does not read (not local, not safetensors, converted on load, ...)."""


_SAFETENSORS_TORCH = {name: getattr(torch, torch_name) for name, (torch_name, _) in SAFETENSORS_DTYPES.items()
                      if hasattr(torch, torch_name)}  # safetensors dtype -> torch dtype, from the one table
_CHUNK_BYTES = 64 << 20  # one read / one host-to-device copy; a multiple of every element size
_PINNED: list[torch.Tensor] = []  # pinned staging buffers, kept for the next load in this process


@dataclass
class LoadStats:
    """What one fast load did, step by step (seconds, bytes)."""

    n_bytes: int = 0
    n_files: int = 0
    n_tensors: int = 0
    threads: int = 0
    headers_s: float = 0.0  # read the safetensors headers
    build_s: float = 0.0  # transformers builds the model around empty tensors (CPU pages untouched)
    alloc_s: float = 0.0  # device tensors (+ pinned staging buffers)
    copy_s: float = 0.0  # wall time of the read -> (pinned) -> device phase
    read_thread_s: float = 0.0  # summed over threads: time inside pread
    wait_thread_s: float = 0.0  # summed over threads: time waiting for a staging buffer's copy to finish
    total_s: float = 0.0

    def line(self, path: str, device: torch.device) -> str:
        gb = self.n_bytes / 1e9
        per_thread = gb / self.read_thread_s if self.read_thread_s else float("inf")
        return (f"causal-kl: fast load of {path} to {device}: {gb:.2f} GB, {self.n_tensors} tensors in {self.n_files} file(s), "
                f"{self.threads} threads: headers {self.headers_s:.2f} s, build {self.build_s:.2f} s, "
                f"alloc {self.alloc_s:.2f} s, read+copy {self.copy_s:.2f} s ({gb / max(self.copy_s, 1e-9):.1f} GB/s; "
                f"pread {self.read_thread_s:.2f} thread-s = {per_thread:.1f} GB/s per thread, "
                f"waiting on copies {self.wait_thread_s:.2f} thread-s), total {self.total_s:.2f} s "
                f"({gb / max(self.total_s, 1e-9):.1f} GB/s)")


def _model_class(hf_config):
    """The class ``AutoModelForCausalLM.from_pretrained`` would instantiate for this config."""
    from transformers import AutoModelForCausalLM

    try:
        from transformers.models.auto.auto_factory import _get_model_class

        return _get_model_class(hf_config, AutoModelForCausalLM._model_mapping)
    except ImportError:  # pragma: no cover - older/newer transformers layouts
        return AutoModelForCausalLM._model_mapping[type(hf_config)]


def fast_from_pretrained(
    path: str,
    hf_config: Any,
    dtype: torch.dtype,
    device: torch.device,
    attn_implementation: str | None = None,
    threads: int | None = None,
    in_place: bool | None = None,
) -> nn.Module:
    """Build ``path``'s model on ``device`` with its safetensors weights read there directly.

    transformers builds the model around empty CPU tensors (``from_pretrained(None, state_dict=...)``:
    key renames, tied weights and non-persistent buffers are its own, no weight bytes touched);
    which checkpoint tensor became which model tensor is read off their storage. Then the
    shards are read in ``threads`` parallel ``pread`` streams: on the CPU straight into the
    model's tensors (``in_place``), on a GPU through pinned staging buffers with asynchronous
    copies, one CUDA stream per thread, cast to ``dtype`` on the device. ``in_place=False`` on the
    CPU runs the device path's swap logic (tests). Raises ``FastLoadUnsupported`` for anything
    else (the caller falls back to ``from_pretrained``).
    """
    from causal_kl.checkpoints import checkpoint_tensors, weight_files

    t0 = time.perf_counter()
    stats = LoadStats()
    if not Path(path).is_dir():
        raise FastLoadUnsupported("not a local folder")
    if getattr(hf_config, "quantization_config", None):
        raise FastLoadUnsupported("quantized checkpoint")
    kind, files = weight_files(path)
    if kind != "safetensors":
        raise FastLoadUnsupported(f"weights are {kind} files, not safetensors" if kind != "none" else "no weight files")
    entries = checkpoint_tensors(path)
    unknown = sorted({e.dtype for e in entries.values()} - set(_SAFETENSORS_TORCH))
    if unknown:
        raise FastLoadUnsupported(f"tensor dtype(s) {unknown}")
    stats.headers_s = time.perf_counter() - t0
    stats.n_files = len(files)

    # 1. empty CPU tensors, one per checkpoint tensor: floating ones in the target dtype (what
    #    from_pretrained casts to), others in their own; torch.empty touches no page
    t = time.perf_counter()
    holders: dict[str, torch.Tensor] = {}
    for key, e in entries.items():
        src = _SAFETENSORS_TORCH[e.dtype]
        holders[key] = torch.empty(e.shape, dtype=dtype if src.is_floating_point else src)
    cls = _model_class(hf_config)
    text_class = getattr(hf_config, "sub_configs", {}).get("text_config")
    if text_class is not None and getattr(cls, "config_class", None) is text_class:
        # a multimodal checkpoint whose causal-LM class is the text decoder alone (Qwen3.5): built from the text
        # config, as AutoModelForCausalLM does
        hf_config = hf_config.get_text_config()
    with _quiet_transformers():
        model = cls.from_pretrained(None, config=hf_config, state_dict=holders, dtype=dtype,
                                    attn_implementation=attn_implementation)
    model.config.name_or_path = path
    _attach_generation_config(model, path)

    # 2. which checkpoint tensor is which model tensor: transformers adopted our tensors as they
    #    were (no copy) unless it had to convert them; anything converted -> fall back
    by_ptr = {h.data_ptr(): key for key, h in holders.items() if h.numel()}
    key_of: dict[str, str] = {}
    unmapped = []
    for name, tensor in model.state_dict(keep_vars=True).items():
        key = by_ptr.get(tensor.data_ptr()) if tensor.numel() else None
        if key is None or holders[key].shape != tensor.shape or holders[key].dtype != tensor.dtype:
            if tensor.numel():
                unmapped.append(name)
            continue
        key_of[name] = key
    if unmapped:
        raise FastLoadUnsupported(f"transformers converted or initialised {len(unmapped)} tensor(s) itself (e.g. {unmapped[0]})")
    used = sorted(set(key_of.values()), key=lambda k: (str(entries[k].file), entries[k].offset))
    stats.build_s = time.perf_counter() - t

    # 3. destination tensors: the model's own on the CPU, fresh device tensors swapped in otherwise
    t = time.perf_counter()
    in_place = device.type == "cpu" if in_place is None else in_place
    if in_place and device.type != "cpu":
        raise ValueError("in_place loading is only possible on the CPU")
    if in_place:
        targets = {k: holders[k] for k in used}
    else:
        targets = {k: torch.empty(holders[k].shape, dtype=holders[k].dtype, device=device) for k in used}
        _swap_tensors(model, {holders[k].data_ptr(): targets[k] for k in used})
    del holders, by_ptr
    n_threads = threads or int(os.environ.get("CAUSAL_KL_LOAD_THREADS", 0)) or min(8, len(os.sched_getaffinity(0)))
    stats.threads = n_threads
    if device.type == "cuda":
        _pinned_buffers(2 * n_threads)
    stats.alloc_s = time.perf_counter() - t

    # 4. read
    t = time.perf_counter()
    jobs = [(entries[k], targets[k]) for k in used]
    stats.read_thread_s, stats.wait_thread_s = _read_tensors(jobs, device, n_threads)
    stats.copy_s = time.perf_counter() - t
    stats.n_bytes = sum(e.nbytes for e, _ in jobs)
    stats.n_tensors = len(jobs)
    model.to(device)  # non-persistent buffers (rotary inv_freq, embed scale), computed on the CPU as from_pretrained does
    stats.total_s = time.perf_counter() - t0
    log.info("%s", stats.line(path, device))
    return model


def _swap_tensors(model: nn.Module, new_by_ptr: dict[int, torch.Tensor]) -> None:
    """Replace every parameter/buffer whose storage is a key of ``new_by_ptr``; tied weights stay tied."""
    made: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None and p.data_ptr() in new_by_ptr:
                ptr = p.data_ptr()
                if ptr not in made:
                    made[ptr] = nn.Parameter(new_by_ptr[ptr], requires_grad=False)
                module._parameters[name] = made[ptr]
        for name, b in list(module._buffers.items()):
            if b is not None and b.data_ptr() in new_by_ptr:
                module._buffers[name] = new_by_ptr[b.data_ptr()]


def _pinned_buffers(n: int) -> list[torch.Tensor]:
    while len(_PINNED) < n:
        _PINNED.append(torch.empty(_CHUNK_BYTES, dtype=torch.uint8, pin_memory=True))
    return _PINNED[:n]


def _pread_into(fd: int, buf: memoryview, offset: int) -> None:
    got = 0
    while got < len(buf):
        n = os.preadv(fd, [buf[got:]], offset + got)
        if n <= 0:
            raise OSError(f"unexpected end of file at byte {offset + got}")
        got += n


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor's storage as a flat uint8 tensor (same memory)."""
    return t.reshape(-1).view(torch.uint8)


def _read_tensors(jobs: list, device: torch.device, n_threads: int) -> tuple[float, float]:
    """Fill each ``(TensorEntry, target)`` from its file; returns (pread thread-seconds, wait thread-seconds)."""
    chunks = []  # (entry, target, first byte within the tensor, n bytes)
    for entry, target in jobs:
        for start in range(0, entry.nbytes, _CHUNK_BYTES):
            chunks.append((entry, target, start, min(_CHUNK_BYTES, entry.nbytes - start)))
    fds = {f: os.open(f, os.O_RDONLY) for f in {e.file for e, _ in jobs}}
    next_chunk = iter(range(len(chunks)))
    take = threading.Lock()
    errors: list[BaseException] = []
    times = [[0.0, 0.0] for _ in range(n_threads)]
    cuda = device.type == "cuda"
    pinned = _pinned_buffers(2 * n_threads) if cuda else []

    def worker(w: int) -> None:
        stream = torch.cuda.Stream(device) if cuda else None
        events = [None, None]
        scratch = None  # CPU: bytes to cast from; GPU: device bytes to cast from
        k = 0
        try:
            while not errors:
                with take:
                    i = next(next_chunk, None)
                if i is None:
                    break
                entry, target, start, n = chunks[i]
                src_dtype = _SAFETENSORS_TORCH[entry.dtype]
                itemsize = entry.nbytes // max(entry.numel, 1)
                same = src_dtype == target.dtype
                if cuda:
                    slot = k % 2
                    k += 1
                    if events[slot] is not None:
                        tw = time.perf_counter()
                        events[slot].synchronize()
                        times[w][1] += time.perf_counter() - tw
                    host = pinned[2 * w + slot]
                    tr = time.perf_counter()
                    _pread_into(fds[entry.file], memoryview(host.numpy())[:n], entry.offset + start)
                    times[w][0] += time.perf_counter() - tr
                    with torch.cuda.stream(stream):
                        if same:
                            _as_bytes(target)[start:start + n].copy_(host[:n], non_blocking=True)
                        else:
                            if scratch is None:
                                scratch = torch.empty(_CHUNK_BYTES, dtype=torch.uint8, device=device)
                            scratch[:n].copy_(host[:n], non_blocking=True)
                            target.reshape(-1)[start // itemsize:(start + n) // itemsize].copy_(scratch[:n].view(src_dtype))
                        events[slot] = torch.cuda.Event()
                        events[slot].record(stream)
                elif same and target.device.type == "cpu":
                    tr = time.perf_counter()
                    _pread_into(fds[entry.file], memoryview(_as_bytes(target)[start:start + n].numpy()), entry.offset + start)
                    times[w][0] += time.perf_counter() - tr
                else:  # a cast on the CPU, or a CPU target that is not the model's own tensor
                    if scratch is None:
                        scratch = torch.empty(_CHUNK_BYTES, dtype=torch.uint8)
                    tr = time.perf_counter()
                    _pread_into(fds[entry.file], memoryview(scratch[:n].numpy()), entry.offset + start)
                    times[w][0] += time.perf_counter() - tr
                    target.reshape(-1)[start // itemsize:(start + n) // itemsize].copy_(scratch[:n].view(src_dtype))
            if cuda:
                stream.synchronize()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(e)

    try:
        pool = [threading.Thread(target=worker, args=(w,), name=f"causal-kl-load-{w}") for w in range(n_threads)]
        for th in pool:
            th.start()
        for th in pool:
            th.join()
    finally:
        for fd in fds.values():
            os.close(fd)
    if errors:
        raise errors[0]
    if cuda:
        torch.cuda.synchronize(device)
    return sum(r for r, _ in times), sum(w for _, w in times)


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' progress bar and load report are noise when the tensors are ours."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _attach_generation_config(model: nn.Module, path: str) -> None:
    """``from_pretrained`` reads generation_config.json; a model built from a state dict does not."""
    if not (Path(path) / "generation_config.json").is_file() or not hasattr(model, "generation_config"):
        return
    from transformers import GenerationConfig

    try:
        model.generation_config = GenerationConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        log.warning("causal-kl: ignoring %s/generation_config.json (%s)", path, e)


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
    return sum(e.numel * item if _SAFETENSORS_TORCH.get(e.dtype, torch.float32).is_floating_point else e.nbytes
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
