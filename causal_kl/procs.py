"""Which processes a model server belongs to, read from ``/proc``: the owner it must not outlive, SLURM steps.

Torch-free and socket-free: what ``causal_kl.client`` asks before it takes a slot (``find_owner``), what the server
watches (``Owner.alive``, ``pid_alive``) and what the timeline's records carry (``process_start_time``).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from causal_kl.errors import CausalKLError

OWNER_ENV = "CAUSAL_KL_SERVER_OWNER"


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time in clock ticks) of a live pid, None if there is none."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = data.rsplit(")", 1)[1].split()
    return rest[0], int(rest[1]), int(rest[19])


def process_start_time(pid: int | None = None) -> float | None:
    """Wall-clock time a process started (this one by default), from /proc (to the clock tick); None off Linux.

    A model job sends its own with each request, so that the timeline can say how much of a gap between requests
    was the job's process starting and importing (``causal_kl.timeline``)."""
    stat = proc_stat(os.getpid() if pid is None else pid)
    try:
        uptime = float(Path("/proc/uptime").read_text().split()[0])  # seconds since boot, as /proc/PID/stat counts
    except (OSError, ValueError, IndexError):
        return None
    return None if stat is None else time.time() - uptime + stat[2] / os.sysconf("SC_CLK_TCK")


def cmdline(pid: int) -> list[str]:
    try:
        return [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return []


def pid_alive(pid: int, start: int | None = None) -> bool:
    """True while ``pid`` runs and, if given, started at ``start`` (no pid reuse).

    A zombie counts as gone, but only once all its threads are: a process that calls
    ``os._exit`` from a side thread shows its main thread as a zombie while the others (and
    its open sockets) still live for a moment.
    """
    st = proc_stat(pid)
    if st is None or (start is not None and st[2] != start):
        return False
    if st[0] not in ("Z", "X"):
        return True
    try:
        tasks = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return False
    for tid in tasks:
        try:
            state = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X"):
            return True
    return False


def is_snakemake(argv: list[str]) -> bool:
    """Is this command line a Snakemake process (``snakemake ...``, ``python -m snakemake ...``, ``python .../bin/snakemake``)?"""
    if not argv:
        return False
    if os.path.basename(argv[0]) == "snakemake":
        return True
    if not re.fullmatch(r"python[0-9.]*", os.path.basename(argv[0])):
        return False
    i = 1
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "-m":
        if argv[i] == "-c":
            return False
        i += 2 if argv[i] in ("-X", "-W") else 1
    if i < len(argv) and argv[i] == "-m":
        return i + 1 < len(argv) and argv[i + 1] == "snakemake"
    return i < len(argv) and os.path.basename(argv[i]) == "snakemake"


@dataclass(frozen=True)
class Owner:
    """The process a server must not outlive (pid + start time, so a reused pid is not mistaken for it)."""

    pid: int
    start: int
    how: str

    def alive(self) -> bool:
        return pid_alive(self.pid, self.start)


def _ancestors(pid: int) -> list[int]:
    out = []
    st = proc_stat(pid)
    while st is not None and st[1] > 1:
        out.append(st[1])
        st = proc_stat(st[1])
    return out


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.decode(errors="replace").split("=", 1) for item in raw.split(b"\0") if b"=" in item)


def _slurm_owner(job_id: str) -> int | None:
    """The allocation's own Snakemake (``--executor slurm-jobstep``, same SLURM_JOB_ID, same user) on this node."""
    found = []
    uid = os.getuid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            if entry.stat().st_uid != uid:
                continue
        except OSError:
            continue
        argv = cmdline(pid)
        if is_snakemake(argv) and "slurm-jobstep" in argv and _environ(pid).get("SLURM_JOB_ID") == job_id:
            st = proc_stat(pid)
            if st is not None:
                found.append((st[2], pid))
    return min(found)[1] if found else None


def slurm_step() -> str | None:
    """The SLURM step whose cgroup holds this process (``"0"``, ``"batch"``...), None outside a step cgroup.

    With ``proctrack/cgroup`` SLURM kills everything in a step's cgroup when the step ends,
    a detached server included; such a server must serve that step only.
    """
    try:
        text = Path("/proc/self/cgroup").read_text()
    except OSError:
        return None
    m = re.search(r"/job_\d+/step_([A-Za-z0-9]+)", text)
    return m.group(1) if m else None


def find_owner() -> Owner:
    """The process whose exit ends the server.

    1. ``CAUSAL_KL_SERVER_OWNER=<pid>`` when set (tests, unusual launchers);
    2. inside a SLURM allocation: the allocation's Snakemake on this node (the one running
       ``--executor slurm-jobstep`` with this ``SLURM_JOB_ID``; each job runs in an ``srun``
       step, which is not its descendant);
    3. the outermost Snakemake among this process and its ancestors (locally, ``run:`` jobs run in a
       nested ``python -m snakemake --target-jobs`` per job; the main one is the invocation, and owns what it
       starts itself, such as the model preload of its ``onstart``);
    4. else this process's parent (a shell, a notebook, pytest).
    """
    env = os.environ.get(OWNER_ENV)
    if env:
        st = proc_stat(int(env))
        if st is None:
            raise CausalKLError(None, OWNER_ENV, f"owner pid {env} is not running", f"unset {OWNER_ENV} or give a live pid")
        return Owner(int(env), st[2], OWNER_ENV)
    job = os.environ.get("SLURM_JOB_ID") or os.environ.get("SLURM_JOBID")
    if job:
        pid = _slurm_owner(job)
        if pid is not None:
            st = proc_stat(pid)
            if st is not None:
                return Owner(pid, st[2], f"SLURM job {job}'s snakemake")
    snakemakes = [p for p in (os.getpid(), *_ancestors(os.getpid())) if is_snakemake(cmdline(p))]
    if snakemakes:
        pid = snakemakes[-1]
        st = proc_stat(pid)
        if st is not None:
            return Owner(pid, st[2], "outermost snakemake ancestor")
    ppid = os.getppid()
    st = proc_stat(ppid)
    return Owner(ppid, st[2] if st else 0, "parent process (no snakemake ancestor)")


def slurm_job_id() -> str | None:
    """The SLURM job (allocation) this process runs in, None outside one."""
    return os.environ.get("SLURM_JOB_ID") or os.environ.get("SLURM_JOBID")
