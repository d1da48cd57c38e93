"""The fast safetensors loader: a local checkpoint's weights read straight onto the device.

``fast_from_pretrained`` builds the model around empty tensors with transformers' own ``from_pretrained`` (key
renames, ties and buffers are transformers'), then reads the safetensors shards in parallel ``pread`` streams into
the model's tensors (on the CPU) or through pinned staging buffers and asynchronous copies (on a GPU): the same
weights, bit for bit, as ``from_pretrained``. ``causal_kl.models.load_model`` calls it and falls back to
``from_pretrained`` on ``FastLoadUnsupported``. The tensor layout is read with ``causal_kl.checkpoints`` (the one
safetensors header reader and dtype table).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from causal_kl.checkpoints import SAFETENSORS_DTYPES

log = logging.getLogger(__name__)


class FastLoadUnsupported(Exception):
    """The checkpoint is one the fast loader does not read (not local, not safetensors, converted on load, ...)."""


SAFETENSORS_TORCH = {name: getattr(torch, torch_name) for name, (torch_name, _) in SAFETENSORS_DTYPES.items()
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


def model_class(hf_config):
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
    unknown = sorted({e.dtype for e in entries.values()} - set(SAFETENSORS_TORCH))
    if unknown:
        raise FastLoadUnsupported(f"tensor dtype(s) {unknown}")
    stats.headers_s = time.perf_counter() - t0
    stats.n_files = len(files)

    # 1. empty CPU tensors, one per checkpoint tensor: floating ones in the target dtype (what
    #    from_pretrained casts to), others in their own; torch.empty touches no page
    t = time.perf_counter()
    holders: dict[str, torch.Tensor] = {}
    for key, e in entries.items():
        src = SAFETENSORS_TORCH[e.dtype]
        holders[key] = torch.empty(e.shape, dtype=dtype if src.is_floating_point else src)
    cls = model_class(hf_config)
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
                src_dtype = SAFETENSORS_TORCH[entry.dtype]
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
