"""GPU slots: each model job holds exactly one GPU, chosen by lock files before anything touches CUDA.

A slot is an exclusive ``fcntl.flock`` on ``<runtime dir>/<scope>/slots/<slot>.lock``, one
file per GPU id (``gpu-<id>``) or the single pseudo-slot ``cpu`` on a box without GPUs (or
when a job asks for ``device: cpu``). A job tries every slot without blocking, then polls
until one frees; it keeps the lock for its whole run (the kernel drops it when the process
dies, however it dies) and sets ``CUDA_VISIBLE_DEVICES`` to that one GPU, so two jobs never
share a GPU and every job's GPU is ``cuda:0``.

- **Which GPUs**: ``CAUSAL_KL_GPUS`` when set (a comma list of ids, ``""`` for none: tests fake
  GPUs on a CPU box with it, and users can pin a run to some GPUs), else
  ``CUDA_VISIBLE_DEVICES`` when set (what SLURM gives an allocation), else one id per line of
  ``nvidia-smi -L``; none of this imports torch.
- **Scope**: under SLURM the slots are per allocation (``slurm-<SLURM_JOB_ID>``: SLURM already
  keeps allocations' GPUs apart, and with device cgroups each allocation numbers its GPUs
  from 0); otherwise per user and machine (``local``), so two runs on one box share its GPUs.
- **Runtime dir**: ``CAUSAL_KL_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/causal-kl``, else
  ``/tmp/causal-kl-<uid>``; mode 0700. The model server's registry lives there too.
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from causal_kl.errors import CausalKLError

GPUS_ENV = "CAUSAL_KL_GPUS"
RUNTIME_ENV = "CAUSAL_KL_RUNTIME_DIR"
CPU_SLOT = "cpu"
_UNSET = object()
_original_visible: object = _UNSET  # CUDA_VISIBLE_DEVICES before acquire_slot narrowed it (a later acquire sees all GPUs again)


def runtime_dir() -> Path:
    """This user's causal-kl runtime folder (slot locks, server registry, default server logs)."""
    if os.environ.get(RUNTIME_ENV):
        root = Path(os.environ[RUNTIME_ENV])
    elif os.environ.get("XDG_RUNTIME_DIR") and os.access(os.environ["XDG_RUNTIME_DIR"], os.W_OK):
        root = Path(os.environ["XDG_RUNTIME_DIR"]) / "causal-kl"
    else:
        root = Path("/tmp") / f"causal-kl-{os.getuid()}"
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    return root


def scope() -> str:
    """``slurm-<job id>`` inside a SLURM allocation, else ``local``."""
    job = os.environ.get("SLURM_JOB_ID") or os.environ.get("SLURM_JOBID")
    return f"slurm-{job}" if job else "local"


def scope_dir() -> Path:
    d = runtime_dir() / scope()
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    return d


def _parse_ids(text: str) -> list[str]:
    ids = []
    for item in text.split(","):
        item = item.strip()
        if not item or item in ("-1", "NoDevFiles", "none"):
            break  # CUDA stops at the first invalid entry
        ids.append(item)
    return ids


def visible_gpus() -> list[str]:
    """The GPU ids this process may use, as strings (``["0", "1"]``, UUIDs or MIG ids as given); [] on a CPU box."""
    if GPUS_ENV in os.environ:
        return _parse_ids(os.environ[GPUS_ENV])
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES") if _original_visible is _UNSET else _original_visible
    if cvd is not None:
        return _parse_ids(cvd)
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:
        return []
    return [str(i) for i, line in enumerate(l for l in out.stdout.splitlines() if l.startswith("GPU "))]


def slot_name(gpu: str | None) -> str:
    """``cpu`` or ``gpu-<id>`` (file-name safe)."""
    return CPU_SLOT if gpu is None else "gpu-" + re.sub(r"[^A-Za-z0-9._-]", "_", gpu)


@dataclass
class Slot:
    """A held slot. ``gpu`` is the id to put in ``CUDA_VISIBLE_DEVICES`` (None for the CPU slot)."""

    name: str
    gpu: str | None
    path: Path
    waited_s: float = 0.0
    _fd: int | None = field(default=None, repr=False)

    @property
    def device(self) -> str:
        return "cpu" if self.gpu is None else "cuda"

    def release(self) -> None:
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> "Slot":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def slot_candidates(device: str = "auto") -> list[str | None]:
    """The GPU ids a job with this ``device`` may take (``[None]``: the CPU slot)."""
    if device == "cpu":
        return [None]
    gpus = visible_gpus()
    if not gpus and device.startswith("cuda"):
        raise CausalKLError("config", "device", "cuda was asked for but no GPU is visible (CAUSAL_KL_GPUS, "
                            "CUDA_VISIBLE_DEVICES and nvidia-smi -L name none)",
                            "set device: cpu or auto, or run on a GPU node")
    return list(gpus) or [None]


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def holder_pid(path: Path) -> int | None:
    """The pid that last took a slot's lock (diagnostics only: the lock itself is the truth)."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def acquire_slot(
    device: str = "auto",
    timeout_s: float | None = None,
    poll_s: float = 0.1,
    on_wait: Callable[[str], None] | None = None,
    set_env: bool = True,
    last: Sequence[str] = (),
) -> Slot:
    """Take one free slot for ``device`` (``auto``, ``cuda``, ``cpu``), waiting while all are held.

    With ``set_env`` the process's ``CUDA_VISIBLE_DEVICES`` becomes the slot's GPU (``""`` for
    the CPU slot), so call this before anything initialises CUDA. ``on_wait`` gets one line when
    the job has to wait. Slots named in ``last`` are tried after the others, in that order (the
    model server names those where another run's server holds the GPU, the one it found so most
    recently last). Raises ``TimeoutError`` after ``timeout_s``.
    """
    global _original_visible
    rank = {name: i for i, name in enumerate(last)}
    candidates = sorted(slot_candidates(device), key=lambda g: rank.get(slot_name(g), -1))
    lock_dir = scope_dir() / "slots"
    lock_dir.mkdir(mode=0o700, exist_ok=True)
    paths = [(g, lock_dir / f"{slot_name(g)}.lock") for g in candidates]
    t0 = time.monotonic()
    told = False
    while True:
        for gpu, path in paths:
            fd = _try_lock(path)
            if fd is not None:
                if set_env:
                    if _original_visible is _UNSET:
                        _original_visible = os.environ.get("CUDA_VISIBLE_DEVICES")
                    os.environ["CUDA_VISIBLE_DEVICES"] = gpu if gpu is not None else ""
                return Slot(slot_name(gpu), gpu, path, time.monotonic() - t0, fd)
        waited = time.monotonic() - t0
        if timeout_s is not None and waited >= timeout_s:
            raise TimeoutError(f"no free slot among {[slot_name(g) for g, _ in paths]} after {waited:.0f} s")
        if not told and on_wait is not None:
            held = ", ".join(f"{slot_name(g)} by pid {holder_pid(p)}" for g, p in paths)
            on_wait(f"waiting for a free slot ({held})")
            told = True
        time.sleep(poll_s)
