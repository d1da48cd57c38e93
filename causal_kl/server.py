"""The model server: one process per (Snakemake invocation, GPU slot) that keeps models loaded and runs job functions.

Why not Snakemake's ``service()`` jobs: a service group runs all its consumers at once with
the sum of their resources, and when one consumer reruns the service reruns and so does
every consumer (both seen with Snakemake 9.27), which would undo shard-level reruns. Here a
model job stays an ordinary job; it calls ``run_remote(func, kwargs, log)``, which

1. finds the owner (the Snakemake process the server must not outlive, ``find_owner``),
2. takes a GPU slot (``causal_kl.gpu``: one GPU per job, ``CUDA_VISIBLE_DEVICES`` set) that no
   other run's server is using (``_take_slot``: two runs on one box share the slots; another run's
   server is stopped only once that run has ended or left it unused for ``CAUSAL_KL_SERVER_HANDOVER``
   seconds, default 30, so the slot changes hands at most once per stage of a run; until then the
   job waits without holding the slot, and says for whose server),
3. connects to that (owner, slot)'s server, spawning it if absent (race-free: a spawn lock,
   and the abstract socket name can be bound only once),
4. checks the server's identity (protocol, causal_kl code version and source digest, torch
   version, Python executable): a stale server is stopped and replaced,
5. sends the request and relays the server's log lines for it to stderr and the job's log,
6. returns the function's (JSON) result, or raises: a ``CausalKLError`` as the server reported
   it, ``RemoteJobError`` for any other exception (traceback in the log), ``ServerError`` when
   the server died or misbehaved (one line: pid, slot, server log).

The client imports neither torch nor transformers. Inside the server, job functions get
models from ``causal_kl.models.get_model`` (a process-wide cache), so a model is loaded once
per server. One request runs at a time; others queue.

Protocol (Unix stream socket in the abstract namespace ``\\0causal-kl/<uid>/<scope>/<key>``,
peers of another uid refused): frames of a 4-byte big-endian length + UTF-8 JSON.
``hello`` -> identity; ``run`` -> ``started``, ``log``*, then ``done`` | ``error``; ``status``;
``shutdown``.

Lifetime: the server exits when its owner exits (pidfd, else 1 s polls), after
``CAUSAL_KL_SERVER_IDLE`` seconds without a request (default 600), on ``shutdown``
(``stop_servers``, ``python -m causal_kl.server --stop``) or SIGTERM. Kept servers (``model_server: {keep_s: N}``,
``CAUSAL_KL_SERVER_KEEP``; never inside a SLURM allocation): when the owner exits the server stays up until it
has been idle N s; a client of the same run's next invocation (same workdir, code identity and model) adopts it
(``adopt``: it takes the new owner and listens under the new owner's key as well), so that invocation finds
the model loaded; any other run stops it as a server whose run has ended (``_hand_over``). Registry: one JSON file per
server under ``<runtime dir>/<scope>/servers/`` (pid, slot, owner, socket, log, workdir).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib
import importlib.metadata
import json
import logging
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from causal_kl import gpu
from causal_kl.errors import CausalKLError

PROTOCOL = 1
IDLE_ENV = "CAUSAL_KL_SERVER_IDLE"
OWNER_ENV = "CAUSAL_KL_SERVER_OWNER"
DEFAULT_IDLE_S = 600.0
KEEP_ENV = "CAUSAL_KL_SERVER_KEEP"
HANDOVER_ENV = "CAUSAL_KL_SERVER_HANDOVER"
DEFAULT_HANDOVER_S = 30.0
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%H:%M:%S"
_MAX_FRAME = 1 << 30

log = logging.getLogger(__name__)
_conn_log = logging.getLogger("causal_kl.server.conn")  # connection chatter: server log only, never relayed to a job


# ----------------------------------------------------------------------------- errors
class ServerError(CausalKLError):
    """The model server died, could not start, or answered something a client must not accept."""

    def __init__(self, problem: str, log_path: str | None, fix: str = "rerun: the next job starts a fresh server; "
                 "if it fails again, read the server log"):
        super().__init__(log_path, "model server", problem, fix)


class RemoteJobError(RuntimeError):
    """A job function raised something other than ``CausalKLError`` inside the server.

    ``str()`` is one line; ``remote_traceback`` is the server-side traceback (also in the job's
    log and the server's log).
    """

    def __init__(self, message: str, remote_traceback: str = ""):
        super().__init__(" ".join(message.split()))
        self.remote_traceback = remote_traceback


class RequestAbandoned(BaseException):
    """Raised inside a job function (at its next log line or print) once its client has gone."""


# ----------------------------------------------------------------------------- processes
def _proc_stat(pid: int) -> tuple[str, int, int] | None:
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
    stat = _proc_stat(os.getpid() if pid is None else pid)
    try:
        uptime = float(Path("/proc/uptime").read_text().split()[0])  # seconds since boot, as /proc/PID/stat counts
    except (OSError, ValueError, IndexError):
        return None
    return None if stat is None else time.time() - uptime + stat[2] / os.sysconf("SC_CLK_TCK")


def _cmdline(pid: int) -> list[str]:
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
    st = _proc_stat(pid)
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
    st = _proc_stat(pid)
    while st is not None and st[1] > 1:
        out.append(st[1])
        st = _proc_stat(st[1])
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
        argv = _cmdline(pid)
        if is_snakemake(argv) and "slurm-jobstep" in argv and _environ(pid).get("SLURM_JOB_ID") == job_id:
            st = _proc_stat(pid)
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
        st = _proc_stat(int(env))
        if st is None:
            raise CausalKLError(None, OWNER_ENV, f"owner pid {env} is not running", f"unset {OWNER_ENV} or give a live pid")
        return Owner(int(env), st[2], OWNER_ENV)
    job = os.environ.get("SLURM_JOB_ID") or os.environ.get("SLURM_JOBID")
    if job:
        pid = _slurm_owner(job)
        if pid is not None:
            st = _proc_stat(pid)
            if st is not None:
                return Owner(pid, st[2], f"SLURM job {job}'s snakemake")
    snakemakes = [p for p in (os.getpid(), *_ancestors(os.getpid())) if is_snakemake(_cmdline(p))]
    if snakemakes:
        pid = snakemakes[-1]
        st = _proc_stat(pid)
        if st is not None:
            return Owner(pid, st[2], "outermost snakemake ancestor")
    ppid = os.getppid()
    st = _proc_stat(ppid)
    return Owner(ppid, st[2] if st else 0, "parent process (no snakemake ancestor)")


# ----------------------------------------------------------------------------- identity
_SOURCE_DIGEST: str | None = None


def source_digest() -> str:
    """sha256 over causal_kl's own ``.py`` files (catches edits a ``-dirty`` code version does not)."""
    global _SOURCE_DIGEST
    if _SOURCE_DIGEST is None:
        root = Path(__file__).resolve().parent
        h = hashlib.sha256()
        for f in sorted(root.rglob("*.py")):
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
        _SOURCE_DIGEST = h.hexdigest()[:16]
    return _SOURCE_DIGEST


def identity() -> dict[str, Any]:
    """What a client requires of a server, and a server reports of itself."""
    from causal_kl import code_version

    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = None
    return {"protocol": PROTOCOL, "code_version": code_version(), "source": source_digest(), "torch": torch_version,
            "python": sys.executable}


# ----------------------------------------------------------------------------- registry
def server_key(owner: Owner, slot: str) -> str:
    return f"{owner.pid}-{owner.start}-{slot}"


def _step_scope() -> str:
    step = slurm_step()
    return gpu.scope() + (f"-step{step}" if step not in (None, "batch", "extern") else "")


def registry_dir(scope: str | None = None) -> Path:
    d = gpu.runtime_dir() / (scope or _step_scope()) / "servers"
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    return d


def socket_name(key: str, scope: str | None = None) -> str:
    return f"\0causal-kl/{os.getuid()}/{scope or _step_scope()}/{key}"


def list_servers(all_scopes: bool = True, clean: bool = True) -> list[dict]:
    """Registry entries of this user's servers (every scope, or this one), each with ``alive``; dead ones removed with ``clean``."""
    root = gpu.runtime_dir()
    dirs = [d / "servers" for d in sorted(root.iterdir()) if (d / "servers").is_dir()] if all_scopes else [registry_dir()]
    out = []
    for d in dirs:
        for f in sorted(d.glob("*.json")):
            try:
                rec = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            rec["alive"] = pid_alive(rec["pid"], rec.get("start"))
            rec["registry_file"] = str(f)
            if not rec["alive"] and clean:
                with contextlib.suppress(OSError):
                    f.unlink()
            out.append(rec)
    return out


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- framing
def _send(sock: socket.socket, obj: dict, lock: threading.Lock | None = None) -> None:
    data = json.dumps(obj, default=_json_default).encode()
    frame = struct.pack(">I", len(data)) + data
    if lock is None:
        sock.sendall(frame)
    else:
        with lock:
            sock.sendall(frame)


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _recv(sock: socket.socket) -> dict | None:
    """The next frame, None on a clean end of stream."""
    head = _recv_exact(sock, 4)
    if head is None:
        return None
    (n,) = struct.unpack(">I", head)
    if n > _MAX_FRAME:
        raise ConnectionError(f"frame of {n} bytes")
    body = _recv_exact(sock, n)
    if body is None:
        return None
    return json.loads(body)


def _json_default(o: Any) -> Any:
    if hasattr(o, "item") and callable(o.item):  # numpy / torch scalars
        return o.item()
    if hasattr(o, "tolist") and callable(o.tolist):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _connect(name: str, timeout_s: float | None = None) -> socket.socket | None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout_s if timeout_s is not None else 10.0)
    try:
        s.connect(name)
    except (ConnectionRefusedError, FileNotFoundError):
        s.close()
        return None
    s.settimeout(None)
    return s


# ----------------------------------------------------------------------------- the server process
class _Forwarder(logging.Handler):
    """Relays the active request's log records to its client; raises ``RequestAbandoned`` in the request thread once the client is gone."""

    def __init__(self, request: "_Request"):
        super().__init__(logging.INFO)
        self.request = request
        self.setFormatter(logging.Formatter(LOG_FORMAT, DATE_FORMAT))

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith("causal_kl.server.conn")

    def emit(self, record: logging.LogRecord) -> None:
        self.request.relay(self.format(record))

    def handleError(self, record) -> None:  # noqa: N802 - logging's name
        pass


class _Tee:
    """stdout/stderr during a request: to the server log, and complete lines to the client."""

    def __init__(self, inner, request: "_Request"):
        self.inner, self.request, self.buf = inner, request, ""

    def write(self, text: str) -> int:
        self.inner.write(text)
        self.buf += text
        while "\n" in self.buf:
            line, self.buf = self.buf.split("\n", 1)
            self.request.relay(line)
        return len(text)

    def flush(self) -> None:
        self.inner.flush()

    def __getattr__(self, name):
        return getattr(self.inner, name)


class _Request:
    def __init__(self, conn: socket.socket, send_lock: threading.Lock, thread_id: int):
        self.conn, self.send_lock, self.thread_id = conn, send_lock, thread_id
        self.gone = threading.Event()
        self.done = threading.Event()

    def relay(self, line: str) -> None:
        if not self.gone.is_set():
            try:
                _send(self.conn, {"op": "log", "line": line}, self.send_lock)
            except OSError:
                self.gone.set()
        if self.gone.is_set() and threading.get_ident() == self.thread_id:
            raise RequestAbandoned()

    def watch(self) -> None:
        """Notice the client going away (it sends nothing while its request runs)."""
        while not self.done.is_set():
            r, _, _ = select.select([self.conn], [], [], 0.5)
            if r and not self.done.is_set():
                try:
                    data = self.conn.recv(1, socket.MSG_PEEK)
                except OSError:
                    data = b""
                if not data:
                    self.gone.set()
                    _conn_log.info("client of the running request is gone: the request is abandoned at its next log line")
                    return
                time.sleep(0.5)


def events_path(log_path: str) -> Path:
    """The server's event records beside its log: ``model_server.log`` -> ``model_server.jsonl``."""
    return Path(log_path).with_suffix(".jsonl")


def slurm_job_id() -> str | None:
    return os.environ.get("SLURM_JOB_ID") or os.environ.get("SLURM_JOBID")


class Server:
    def __init__(self, key: str, slot: str, owner: Owner, log_path: str, idle_s: float, origin: str = "job",
                 keep_s: float = 0.0):
        self.key, self.slot, self.owner, self.log_path, self.idle_s = key, slot, owner, log_path, idle_s
        self.keep_s = 0.0 if slurm_job_id() else keep_s  # an allocation's end kills it anyway: never kept there
        self.orphaned = False  # the owner has exited and the server waits, kept, for the run's next invocation
        self.adopted = threading.Event()
        self.workdir = os.getcwd()
        self.socks: list[socket.socket] = []
        self.wake_r, self.wake_w = os.pipe()
        self.origin = origin  # "job": spawned by a model job's client; "allocation": by a cluster allocation's Snakemake
        self.identity = identity()
        self.run_lock = threading.Lock()
        self.state_lock = threading.Lock()
        self.active = 0  # requests running or waiting
        self.n_requests = 0
        self.last_activity = time.monotonic()
        self.stopping = threading.Event()
        self.registry_file = registry_dir() / f"{key}.json"
        self.events = events_path(log_path)

    def record(self, event: str, **fields: Any) -> None:
        """Append one JSON line to the server's event records (start, load, request): what tests and benchmarks
        read to count model loads per allocation and the time between model requests. One ``write`` per line on an
        ``O_APPEND`` file, so servers of several allocations can share a run's record file."""
        rec = {"event": event, "time": time.time(), "pid": os.getpid(), "slot": self.slot, "host": socket.gethostname(),
               "slurm_job_id": slurm_job_id(), "scope": _step_scope(), **fields}
        with contextlib.suppress(OSError):
            fd = os.open(self.events, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, (json.dumps(rec, sort_keys=True, default=str) + "\n").encode())
            finally:
                os.close(fd)

    # -- lifecycle
    def serve(self) -> int:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(socket_name(self.key))
        except OSError as e:
            log.info("another server already serves %s (%s): exiting", self.key, e)
            return 3
        sock.listen(64)
        self.socks.append(sock)
        self.started = time.time()
        self._write_registry()
        log.info("causal-kl model server pid %d: slot %s, scope %s, owner pid %d (%s), idle timeout %.0f s, kept %.0f s "
                 "after its owner exits, code %s, log %s", os.getpid(), self.slot, _step_scope(), self.owner.pid,
                 " ".join(_cmdline(self.owner.pid))[:120], self.idle_s, self.keep_s, self.identity["code_version"],
                 self.log_path)
        self.record("start", owner_pid=self.owner.pid, owner_how=self.owner.how, key=self.key, origin=self.origin,
                    keep_s=self.keep_s)
        signal.signal(signal.SIGTERM, lambda *_: self._exit("SIGTERM", 0))
        threading.Thread(target=self._watch_owner, daemon=True, name="owner-watch").start()
        while not self.stopping.is_set():
            r, _, _ = select.select([*self.socks, self.wake_r], [], [], 1.0)
            if self.wake_r in r:
                os.read(self.wake_r, 64)  # an adoption added a socket: select on it too
            for ready in r:
                if ready is self.wake_r:
                    continue
                conn, _ = ready.accept()
                pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
                if uid != os.getuid():
                    _conn_log.warning("refused a connection from uid %d (pid %d)", uid, pid)
                    conn.close()
                    continue
                threading.Thread(target=self._handle, args=(conn, pid), daemon=True, name=f"conn-{pid}").start()
            with self.state_lock:
                limit = self.keep_s if self.orphaned else self.idle_s
                idle = self.active == 0 and time.monotonic() - self.last_activity > limit
                why = f"kept {limit:.0f} s after its run's invocation ended and not adopted" if self.orphaned else f"idle for {limit:.0f} s"
            if idle:
                self._exit(why, 0)
        with self.run_lock:  # a graceful shutdown lets the running request finish
            self._exit("shutdown requested", 0)
        return 0

    def _exit(self, why: str, code: int) -> None:
        log.info("causal-kl model server pid %d exits: %s (%d requests served)", os.getpid(), why, self.n_requests)
        try:
            rec = json.loads(self.registry_file.read_text())
            if rec.get("pid") == os.getpid():
                self.registry_file.unlink()
        except (OSError, json.JSONDecodeError):
            pass
        logging.shutdown()
        os._exit(code)

    def _write_registry(self) -> None:
        _write_json_atomic(self.registry_file, {
            "pid": os.getpid(), "start": _proc_stat(os.getpid())[2], "slot": self.slot, "key": self.key,
            "owner_pid": self.owner.pid, "owner_start": self.owner.start, "owner_cmdline": " ".join(_cmdline(self.owner.pid))[:300],
            "socket": socket_name(self.key).lstrip("\0"), "log": self.log_path, "workdir": self.workdir,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "started": self.started,
            "identity": self.identity, "idle_s": self.idle_s, "keep_s": self.keep_s, "kept": self.orphaned,
        })

    def _watch_owner(self) -> None:
        """Exit when the owner does; a kept server instead waits, orphaned, for an adoption (then watches the new owner)."""
        while True:
            owner = self.owner
            try:
                fd = os.pidfd_open(owner.pid)
            except (AttributeError, OSError):
                fd = None
            while owner.alive():
                if fd is not None:
                    select.select([fd], [], [], 5.0)
                else:
                    time.sleep(1.0)
            if fd is not None:
                os.close(fd)
            with self.state_lock:
                if self.owner != owner:
                    continue  # adopted by the next invocation while this one was ending
                if self.keep_s <= 0:
                    self._exit(f"owner pid {owner.pid} exited", 0)
                self.orphaned = True
                self.last_activity = time.monotonic()  # kept keep_s from here (or from the request running now)
                self.adopted.clear()
                self._write_registry()
            log.info("owner pid %d exited: kept for %.0f s idle, for this run's next invocation to adopt", owner.pid, self.keep_s)
            self.record("kept", owner_pid=owner.pid, keep_s=self.keep_s)
            self.adopted.wait()

    def _adopt(self, msg: dict, peer_pid: int) -> dict:
        """A client of a new invocation of this server's run takes it over (``op: adopt``): refused while the current
        owner lives (another invocation's server), for other code or another workdir, or when not kept."""
        new = Owner(int(msg["owner_pid"]), int(msg["owner_start"]), "adopting client's " + str(msg.get("owner_how")))
        with self.state_lock:
            if (new.pid, new.start) == (self.owner.pid, self.owner.start):
                return {"op": "adopted", "pid": os.getpid(), "already": True}
            why = None
            if self.keep_s <= 0:
                why = "this server is not kept"
            elif self.owner.alive():
                why = f"its owner pid {self.owner.pid} still runs"
            elif msg.get("identity") != self.identity:
                why = "other code"
            elif os.path.realpath(str(msg.get("workdir"))) != os.path.realpath(self.workdir):
                why = f"another workdir ({msg.get('workdir')}, this server's {self.workdir})"
            if why is None:
                key = server_key(new, self.slot)
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.bind(socket_name(key))
                except OSError as e:
                    sock.close()
                    why = f"the new owner's socket is taken ({e})"
            if why is not None:
                return {"op": "refused", "reason": why}
            sock.listen(64)
            self.socks.append(sock)
            old_owner, old_file = self.owner, self.registry_file
            self.owner, self.key, self.orphaned = new, key, False
            self.keep_s = 0.0 if slurm_job_id() else float(msg.get("keep_s") or 0.0)
            self.registry_file = registry_dir() / f"{key}.json"
            self.last_activity = time.monotonic()
            self._write_registry()
            with contextlib.suppress(OSError):
                old_file.unlink()
            os.write(self.wake_w, b"a")
            self.adopted.set()
        log.info("adopted by pid %d's run (owner pid %d, before: %d): the model stays loaded; kept %.0f s after this owner exits",
                 peer_pid, new.pid, old_owner.pid, self.keep_s)
        self.record("adopt", owner_pid=new.pid, previous_owner_pid=old_owner.pid, key=key, keep_s=self.keep_s,
                    client_pid=peer_pid)
        return {"op": "adopted", "pid": os.getpid(), "already": False}

    # -- connections
    def _handle(self, conn: socket.socket, peer_pid: int) -> None:
        send_lock = threading.Lock()
        try:
            while True:
                msg = _recv(conn)
                if msg is None:
                    return
                op = msg.get("op")
                if op == "hello":
                    with self.state_lock:
                        busy = self.active
                        idle = 0.0 if busy else time.monotonic() - self.last_activity
                    models = sys.modules.get("causal_kl.models")
                    _send(conn, {"op": "hello", "pid": os.getpid(), "slot": self.slot, "key": self.key, "log": self.log_path,
                                 "identity": self.identity, "busy": busy, "idle_s": idle, "owner_pid": self.owner.pid,
                                 "kept": self.orphaned, "keep_s": self.keep_s,
                                 "models": models.resident_paths() if models is not None else []},
                          send_lock)
                elif op == "adopt":
                    _send(conn, self._adopt(msg, peer_pid), send_lock)
                elif op == "status":
                    from causal_kl import models

                    with self.state_lock:
                        busy = self.active
                    _send(conn, {"op": "status", "pid": os.getpid(), "busy": busy, "requests": self.n_requests,
                                 "models": models.resident_models() if "causal_kl.models" in sys.modules else []}, send_lock)
                elif op == "shutdown":
                    _send(conn, {"op": "bye", "pid": os.getpid()}, send_lock)
                    if msg.get("force"):
                        self._exit(f"forced shutdown by pid {peer_pid}", 0)
                    self.stopping.set()
                    return
                elif op == "run":
                    self._run(conn, msg, send_lock, peer_pid)
                else:
                    _send(conn, {"op": "error", "kind": "protocol", "message": f"unknown op {op!r}"}, send_lock)
        except (OSError, ValueError) as e:
            _conn_log.info("connection from pid %d ended: %s", peer_pid, e)
        finally:
            conn.close()

    def _run(self, conn: socket.socket, msg: dict, send_lock: threading.Lock, peer_pid: int) -> None:
        if msg.get("identity") != self.identity:
            _send(conn, {"op": "refused", "reason": f"identity differs: client {msg.get('identity')}, server {self.identity}"}, send_lock)
            return
        expect = msg.get("expect")
        if expect:
            from causal_kl.checkpoints import stat_fingerprint

            seen = stat_fingerprint(expect["path"])
            if seen != expect["fingerprint"]:
                _send(conn, {"op": "refused", "reason": f"{expect['path']} has fingerprint {seen} here, "
                             f"{expect['fingerprint']} for the client"}, send_lock)
                return
        with self.state_lock:
            self.active += 1
        t_queue = time.perf_counter()
        try:
            with self.run_lock:
                waited = time.perf_counter() - t_queue
                with self.state_lock:
                    self.n_requests += 1
                    n = self.n_requests
                request = _Request(conn, send_lock, threading.get_ident())
                watcher = threading.Thread(target=request.watch, daemon=True, name=f"watch-{peer_pid}")
                watcher.start()
                try:
                    _send(conn, {"op": "started", "request": n, "pid": os.getpid(), "waited_s": waited}, send_lock)
                except OSError:
                    request.gone.set()
                reply = self._execute(request, msg, n, peer_pid)
                request.done.set()
                if reply is not None and not request.gone.is_set():
                    try:
                        _send(conn, reply, send_lock)
                    except OSError:
                        _conn_log.info("request #%d: its client left before the reply", n)
        finally:
            with self.state_lock:
                self.active -= 1
                self.last_activity = time.monotonic()

    def _execute(self, request: _Request, msg: dict, n: int, peer_pid: int) -> dict | None:
        func_name = msg["func"]
        root = logging.getLogger()
        handler = _Forwarder(request)
        root.addHandler(handler)
        old_out, old_err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(old_out, request), _Tee(old_err, request)
        old_cwd = os.getcwd()
        t = time.perf_counter()
        t_wall = time.time()
        loads_before = _load_count()
        ok = False
        _model_usage()  # forget what earlier requests used
        try:
            log.info("request #%d from pid %d: %s in %s (server pid %d, slot %s)", n, peer_pid, func_name, msg.get("cwd"),
                     os.getpid(), self.slot)
            if msg.get("cwd"):
                os.chdir(msg["cwd"])
            if msg.get("threads"):
                import torch

                torch.set_num_threads(int(msg["threads"]))
            func = _resolve(func_name)
            result = func(**msg.get("kwargs", {}))
            json.dumps(result, default=_json_default)
            used = _model_usage()
            ok = True
            log.info("request #%d done in %.2f s", n, time.perf_counter() - t)
            return {"op": "done", "result": result, "models": used, "seconds": time.perf_counter() - t}
        except RequestAbandoned:
            _conn_log.info("request #%d abandoned after %.1f s: its client is gone", n, time.perf_counter() - t)
            return None
        except CausalKLError as e:
            with contextlib.suppress(RequestAbandoned):
                log.error("%s", e)
            return {"op": "error", "kind": "CausalKLError", "file": e.file, "field": e.field, "problem": e.problem,
                    "fix": e.fix, "message": str(e)}
        except Exception as e:  # noqa: BLE001 - reported to the client, the server carries on
            tb = traceback.format_exc()
            with contextlib.suppress(RequestAbandoned):
                log.error("request #%d: %s raised:\n%s", n, func_name, tb.rstrip())
            return {"op": "error", "kind": "exception", "type": type(e).__name__, "message": " ".join(str(e).split()),
                    "traceback": tb}
        finally:
            sys.stdout, sys.stderr = old_out, old_err
            root.removeHandler(handler)
            os.chdir(old_cwd)
            loads = _load_count() - loads_before
            for model in _model_loads()[len(_model_loads()) - loads:] if loads else []:
                self.record("load", request=n, **model)
            self.record("request", request=n, func=func_name, start=t_wall, seconds=time.perf_counter() - t, ok=ok,
                        loads=loads, client_pid=peer_pid, log=msg.get("log"), client=msg.get("client"))


def _model_usage() -> list[dict]:
    """Models handed out by get_model since the last call; torch is never imported just to ask."""
    models = sys.modules.get("causal_kl.models")
    return models.take_model_usage() if models is not None else []


def _load_count() -> int:
    """Models this server process has loaded so far (0 before the first model job imported causal_kl.models)."""
    models = sys.modules.get("causal_kl.models")
    return models.load_count() if models is not None else 0


def _model_loads() -> list[dict]:
    models = sys.modules.get("causal_kl.models")
    return models.load_records() if models is not None else []


def _resolve(func: str) -> Callable:
    module, _, name = func.partition(":")
    if not module or not name:
        raise CausalKLError(None, "func", f"{func!r} is not 'package.module:function'", "name the job function as module:function")
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _serve_main(args: argparse.Namespace) -> int:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, DATE_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for noisy in ("transformers", "datasets", "urllib3", "filelock", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    owner = Owner(args.owner, args.owner_start, "spawning client" if args.origin == "job" else args.origin)
    return Server(args.key, args.slot, owner, args.log, args.idle, origin=args.origin, keep_s=args.keep).serve()


# ----------------------------------------------------------------------------- the client
class _JobLog:
    """The client's output: every line to stderr and to the job's log file."""

    def __init__(self, path: str | None, echo: bool = True):
        self.path, self.echo = path, echo
        self.file = None
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "w", buffering=1)

    def raw(self, line: str) -> None:
        if self.echo:
            print(line, file=sys.stderr, flush=True)
        if self.file:
            self.file.write(line + "\n")

    def line(self, message: str, level: str = "INFO") -> None:
        self.raw(f"{time.strftime(DATE_FORMAT)} {level} causal_kl.server: {message}")

    def close(self) -> None:
        if self.file:
            self.file.close()


def _spawn(key: str, slot: gpu.Slot, owner: Owner, log_path: str, idle_s: float, origin: str = "job") -> subprocess.Popen:
    env = dict(os.environ)
    env["CUDA_VISIBLE_DEVICES"] = slot.gpu if slot.gpu is not None else ""
    pkg_root = str(Path(__file__).resolve().parent.parent)
    if Path(pkg_root).name not in ("site-packages", "dist-packages"):
        env["PYTHONPATH"] = os.pathsep.join([pkg_root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.pop(OWNER_ENV, None)
    env["PYTHONUNBUFFERED"] = "1"
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as logf:
        return subprocess.Popen(
            [sys.executable, "-m", "causal_kl.server", "--serve", "--key", key, "--slot", slot.name,
             "--owner", str(owner.pid), "--owner-start", str(owner.start), "--log", log_path, "--idle", str(idle_s),
             "--origin", origin, "--keep", str(keep_s())],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
            cwd=os.getcwd(), env=env,
        )


_CHILDREN: list[subprocess.Popen] = []  # spawned servers (polled now and then so none lingers as a zombie)


def _tail(path: str, n: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _connect_or_spawn(slot: gpu.Slot, owner: Owner, ident: dict, server_log: str | None, out: _JobLog,
                      start_timeout_s: float) -> tuple[socket.socket, dict]:
    key = server_key(owner, slot.name)
    allocation = _allocation_server(key, ident, out)
    if allocation is not None:
        return allocation
    name = socket_name(key)
    reg = registry_dir()
    log_path = str(Path(server_log).resolve()) if server_log else str(reg / f"{key}.log")
    for _ in range(3):
        conn = _connect(name)
        if conn is None:
            with open(reg / f"{key}.spawn.lock", "w") as lockf:
                fcntl.flock(lockf, fcntl.LOCK_EX)
                conn = _connect(name)
                if conn is None:
                    t = time.perf_counter()
                    proc = _spawn(key, slot, owner, log_path, float(os.environ.get(IDLE_ENV, DEFAULT_IDLE_S)))
                    _CHILDREN.append(proc)
                    deadline = time.monotonic() + start_timeout_s
                    while conn is None:
                        if proc.poll() is not None:
                            raise ServerError(f"a new server for slot {slot.name} exited with code {proc.returncode} "
                                              f"before listening: {_tail(log_path, 3)!r}", log_path)
                        if time.monotonic() > deadline:
                            proc.kill()
                            raise ServerError(f"a new server for slot {slot.name} did not listen within {start_timeout_s:.0f} s", log_path)
                        time.sleep(0.02)
                        conn = _connect(name)
                    out.line(f"started model server pid {proc.pid} on slot {slot.name} in {time.perf_counter() - t:.2f} s "
                             f"(owner pid {owner.pid}: {owner.how}); its log: {log_path}")
        try:
            _send(conn, {"op": "hello", "identity": ident})
            info = _recv(conn)
        except OSError:  # it exited between connect and accept (an idle timeout, a stop): try again
            info = None
        if info is None or info.get("op") != "hello":
            conn.close()
            out.line(f"the server for slot {slot.name} went away during hello: trying again")
            continue
        if info["identity"] == ident:
            return conn, info
        out.line(f"model server pid {info['pid']} on slot {slot.name} is stale (code {info['identity'].get('code_version')} "
                 f"/ {info['identity'].get('source')}, this job {ident['code_version']} / {ident['source']}): replacing it")
        _stop_one(conn, info["pid"], force=True)
    raise ServerError(f"could not get a current server on slot {slot.name}", log_path)


def _allocation_server(key: str, ident: dict, out: _JobLog) -> tuple[socket.socket, dict] | None:
    """Inside a SLURM job step: the server the allocation's own Snakemake started (``prestart_servers``), if any.

    Under ``proctrack/cgroup`` a server a job step spawns dies with that step, so each step would load the model
    again; the server of the allocation's Snakemake lives in the batch step, for the whole allocation.
    """
    if _step_scope() == gpu.scope():
        return None  # not in a step of its own: the scope's own server is the allocation's
    conn = _connect(socket_name(key, gpu.scope()))
    if conn is None:
        return None
    try:
        _send(conn, {"op": "hello", "identity": ident})
        info = _recv(conn)
    except OSError:
        info = None
    if info is None or info.get("op") != "hello" or info["identity"] != ident:
        conn.close()
        out.line("the allocation's model server is gone or runs other code: this step starts its own")
        return None
    return conn, info


def prestart_servers(device: str, server_log: str, idle_s: float | None = None, start_timeout_s: float = 120.0) -> list[int]:
    """Start the model server(s) of this SLURM allocation from its own Snakemake, before any job step runs.

    Called at parse time by the allocation's Snakemake (the one ``--executor slurm-jobstep`` runs in the batch
    step; ``rules/common.smk``), so the server lives as long as the allocation's Snakemake, in the batch step,
    whatever SLURM's process tracking does to the job steps; every job step of the allocation finds it
    (``_allocation_server``) and the model is loaded once per allocation. One server per slot the allocation
    holds (its GPU; the CPU slot for ``device: cpu``). Returns the pids started (none when this process is not
    the allocation's owner, e.g. a job step's own Snakemake).
    """
    owner = find_owner()
    if owner.pid != os.getpid() or slurm_job_id() is None:
        return []
    pids = []
    idle = float(os.environ.get(IDLE_ENV, DEFAULT_IDLE_S)) if idle_s is None else idle_s
    log_path = str(Path(server_log).resolve())
    for g in gpu.slot_candidates(device):
        slot = gpu.Slot(gpu.slot_name(g), g, Path(os.devnull))
        key = server_key(owner, slot.name)
        if _connect(socket_name(key)) is not None:
            continue
        proc = _spawn(key, slot, owner, log_path, idle, origin="allocation")
        _CHILDREN.append(proc)
        deadline = time.monotonic() + start_timeout_s
        while (conn := _connect(socket_name(key))) is None:  # listening before the first job step asks for it
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ServerError(f"the allocation's model server for slot {slot.name} did not start: "
                                  f"{_tail(log_path, 3)!r}", log_path)
            time.sleep(0.02)
        conn.close()
        pids.append(proc.pid)
    return pids


def _stop_one(conn: socket.socket | None, pid: int, force: bool, timeout_s: float = 10.0, start: int | None = None) -> bool:
    """Ask a server to exit, then SIGTERM, then SIGKILL; True once it is gone."""
    if conn is not None:
        with contextlib.suppress(OSError, ValueError):
            _send(conn, {"op": "shutdown", "force": force})
            _recv(conn)
        conn.close()
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None and pid_alive(pid, start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not pid_alive(pid, start):
                return True
            time.sleep(0.02)
    return not pid_alive(pid, start)


def keep_s() -> float:
    """How long a server this process starts or adopts stays up after its owner exits (``CAUSAL_KL_SERVER_KEEP``,
    set by the workflow from ``model_server: {keep_s: N}``); 0, never kept, inside a SLURM allocation."""
    if slurm_job_id():
        return 0.0
    try:
        return max(0.0, float(os.environ.get(KEEP_ENV) or 0.0))
    except ValueError:
        raise CausalKLError(None, KEEP_ENV, f"{os.environ[KEEP_ENV]!r} is not a number of seconds",
                            f"set {KEEP_ENV} to seconds (0: not kept), or leave it to model_server.keep_s") from None


def _try_adopt(conn: socket.socket, rec: dict, info: dict, owner: Owner, ident: dict | None,
               model_path: str | None) -> str | None:
    """Adopt ``rec``, a kept server of this run's previous invocation (its owner gone): None when adopted, else why not."""
    if not rec.get("keep_s"):
        return "not kept"
    if ident is None or (info.get("identity") or rec.get("identity")) != ident:
        return "other code"
    if os.path.realpath(rec.get("workdir") or "") != os.path.realpath(os.getcwd()):
        return "another workdir"
    if model_path is not None and info.get("models") and model_path not in info["models"]:
        return f"another model ({', '.join(info['models'])})"
    try:
        _send(conn, {"op": "adopt", "owner_pid": owner.pid, "owner_start": owner.start, "owner_how": owner.how,
                     "identity": ident, "workdir": os.getcwd(), "keep_s": keep_s()})
        reply = _recv(conn)
    except (OSError, ValueError) as e:
        return f"no answer ({e})"
    if not reply or reply.get("op") != "adopted":
        return (reply or {}).get("reason", "refused")
    return None


def handover_s() -> float:
    """How long another run's server must have been idle before a job of this run may stop it and take its slot."""
    return float(os.environ.get(HANDOVER_ENV, DEFAULT_HANDOVER_S))


def _describe(rec: dict) -> str:
    """Another run's server, as a waiting job names it: its pid, its run (owner pid and command), workdir and code."""
    ident = rec.get("identity") or {}
    return (f"pid {rec['pid']}, run of owner pid {rec['owner_pid']} ({rec.get('owner_cmdline', '')[:80] or '?'}), "
            f"workdir {rec.get('workdir')}, code {ident.get('code_version')} / {ident.get('source')}")


def _hand_over(slot: str, owner: Owner, out: _JobLog, grace_s: float, ident: dict | None = None,
               model_path: str | None = None) -> tuple[dict, dict] | None:
    """Make the held ``slot`` free of other runs' servers, or say which one to wait for.

    A slot's GPU holds one server, so another run's server there must go before this run starts its own; but
    it is stopped only when its run has ended (its owner is gone), it no longer listens, or it has served nothing
    for ``grace_s`` seconds (its run's model jobs stopped coming: between stages, or done). A server that is
    running a request, or whose run used it within ``grace_s``, is left alone: returns its (registry record,
    hello reply) and the caller releases the slot and waits. The slot lock is held here, so no job of that run
    can start a request while this looks and stops. A server whose run has ended but which was kept for the run's
    next invocation is adopted instead when this is that invocation (same workdir, code ``ident``, ``model_path``
    resident or none): it then listens under this run's key too, model loaded. None: the slot is free for this
    run's own server.
    """
    for rec in list_servers(all_scopes=False):
        if not rec["alive"] or rec["slot"] != slot or (rec["owner_pid"], rec.get("owner_start")) == (owner.pid, owner.start):
            continue
        try:
            conn = _connect("\0" + rec["socket"], 2.0)
        except OSError:  # a full backlog: it is there, and slow
            if pid_alive(rec["owner_pid"], rec.get("owner_start")):
                return rec, {"op": "hello", "busy": "not answering"}
            conn = None
        info = None
        if conn is not None:
            try:
                conn.settimeout(10.0)
                _send(conn, {"op": "hello"})
                info = _recv(conn)
                conn.settimeout(None)
            except (OSError, ValueError):
                info = {"op": "hello", "busy": "not answering"}  # slow to answer (a long step holding the GIL): in use
        force = True
        if not pid_alive(rec["owner_pid"], rec.get("owner_start")):
            why = "its run has ended"
            if conn is not None and info is not None and info.get("op") == "hello":
                not_adopted = _try_adopt(conn, rec, info, owner, ident, model_path)
                if not_adopted is None:
                    conn.close()
                    out.line(f"adopted the model server pid {rec['pid']} on slot {slot} that this run's previous invocation "
                             f"kept (owner pid {rec['owner_pid']} gone; models loaded: {', '.join(info.get('models') or []) or 'none'})")
                    continue
                if rec.get("keep_s"):
                    why += f", and it was kept for another run ({not_adopted})"
        elif conn is None or info is None or info.get("op") != "hello":
            why = "it does not listen"  # exiting, or it lost its socket: it can serve no one
        elif info.get("busy") or (info.get("idle_s") is not None and info["idle_s"] < grace_s):
            conn.close()
            return rec, info
        else:  # idle, and this job holds the slot: a graceful shutdown, which would still let a request finish
            idle = info.get("idle_s")
            why = f"its run has not used it for {idle:.0f} s: handing the slot over" if idle is not None else "it is idle"
            force = False
        out.line(f"stopping another run's model server on slot {slot} ({_describe(rec)}): {why}")
        _stop_one(conn, rec["pid"], force=force, start=rec.get("start"))
    return None


def _take_slot(device: str, owner: Owner, out: _JobLog, ident: dict | None = None, model_path: str | None = None,
               set_env: bool = True) -> gpu.Slot:
    """A slot for ``device`` that holds no other live run's server in use (``_hand_over``), waiting while there is none.

    While it waits the job holds no slot, so the other run's jobs keep using their server; it says once what it
    waits for (and again every few minutes). A run that keeps its server busy keeps the slot; the other run takes
    it over when that run's model jobs pause for ``CAUSAL_KL_SERVER_HANDOVER`` seconds or the run ends: one
    handover per stage of a run, not one per job.
    """
    t0 = time.monotonic()
    grace = handover_s()
    names = {gpu.slot_name(g) for g in gpu.slot_candidates(device)}
    avoid: list[str] = []  # slots where another run's server was found in use, the latest last
    told: dict[int, float] = {}
    first = True
    while True:
        slot = gpu.acquire_slot(device, on_wait=out.line if first else None, last=avoid, set_env=set_env)
        first = False
        try:
            blocker = _hand_over(slot.name, owner, out, grace, ident, model_path)
        except BaseException:
            slot.release()
            raise
        if blocker is None:
            slot.waited_s = time.monotonic() - t0
            if told:
                out.line(f"slot {slot.name} is this run's now, after waiting {slot.waited_s:.1f} s for another run's server")
            return slot
        slot.release()
        rec, info = blocker
        seen = slot.name in avoid
        if seen:
            avoid.remove(slot.name)
        avoid.append(slot.name)
        if not seen and not names <= set(avoid):
            continue  # a slot not looked at yet may be free of other runs' servers: try it before waiting
        now = time.monotonic()
        if now - told.get(rec["pid"], -1e9) > 300:
            busy = info.get("busy")
            if busy:
                state = busy if isinstance(busy, str) else "running a request"
            else:
                state = f"last used {info.get('idle_s', 0):.0f} s ago"
            out.line(f"waiting for another run's model server on slot {slot.name} ({_describe(rec)}; {state}): "
                     f"this job takes the slot once that run leaves it unused for {grace:.0f} s ({HANDOVER_ENV}) "
                     "or ends; stopping it now would cost that run a model load")
            told[rec["pid"]] = now
        time.sleep(min(0.5, max(grace / 10, 0.05)))


def run_remote(
    func: str,
    kwargs: dict,
    log_path: str | None = None,
    *,
    device: str = "auto",
    threads: int | None = None,
    expect_model: dict | None = None,
    server_log: str | None = None,
    start_timeout_s: float = 120.0,
    echo: bool = True,
    set_env: bool = True,
) -> Any:
    """Run ``func(**kwargs)`` (``"package.module:function"``, JSON-able kwargs) in this slot's model server; return its result.

    Takes a slot for ``device`` (``auto``/``cuda``/``cpu``) for the whole call, connects to (or
    starts) the server of (owner, slot), relays the request's log lines to stderr and
    ``log_path`` (truncated first: it is this job's log). ``expect_model`` =
    ``{"path", "dtype"[, "device"]}``: the reply is refused unless every model the job got from
    ``get_model`` at that path has this fingerprint (computed here) and dtype. ``threads``
    sets torch's thread count for the request. ``server_log`` is the log of a server this call
    starts (default: beside the registry). Raises ``CausalKLError`` (the job's own, one line),
    ``RemoteJobError`` or ``ServerError``.
    ``set_env``: narrow this process's ``CUDA_VISIBLE_DEVICES`` to
    the slot's GPU (a job's process); False where the caller's environment is inherited by other jobs (the preload).
    """
    out = _JobLog(log_path, echo)
    entered = time.time()
    try:
        t0 = time.perf_counter()
        owner = find_owner()
        ident = identity()
        expect = model_path = None
        if expect_model is not None:
            from causal_kl.checkpoints import resolved

            model_path = resolved(expect_model["path"])
        with _take_slot(device, owner, out, ident, model_path, set_env) as slot:
            conn, info = _connect_or_spawn(slot, owner, ident, server_log, out, start_timeout_s)
            if expect_model is not None:
                from causal_kl.checkpoints import stat_fingerprint

                expect = {"path": model_path, "fingerprint": stat_fingerprint(model_path), "dtype": expect_model.get("dtype"),
                          "device": expect_model.get("device")}
            pid, srv_log = info["pid"], info.get("log")
            out.line(f"{func} -> model server pid {pid} (slot {slot.name}{', busy: queued' if info.get('busy') else ''}; "
                     f"slot wait {slot.waited_s:.2f} s, connect {time.perf_counter() - t0:.2f} s)")
            try:
                _send(conn, {"op": "run", "func": func, "kwargs": kwargs, "cwd": os.getcwd(), "threads": threads,
                             "identity": ident, "expect": expect, "log": log_path,
                             "client": {"process_start": process_start_time(), "entered": entered, "sent": time.time()}})
                while True:
                    msg = _recv(conn)
                    if msg is None:
                        raise _died(pid, slot.name, func, srv_log)
                    op = msg.get("op")
                    if op == "log":
                        out.raw(msg["line"])
                    elif op == "started":
                        if msg.get("waited_s", 0) > 0.5:
                            out.line(f"request #{msg['request']} started after {msg['waited_s']:.1f} s in the server's queue")
                    elif op == "done":
                        _check_models(msg.get("models", []), expect, pid, slot.name, srv_log)
                        out.line(f"{func} done in the server in {msg['seconds']:.2f} s (round trip {time.perf_counter() - t0:.2f} s)")
                        return msg.get("result")
                    elif op == "error":
                        if msg.get("kind") == "CausalKLError":
                            raise CausalKLError(msg["file"], msg["field"], msg["problem"], msg["fix"])
                        raise RemoteJobError(f"{func} raised {msg.get('type')}: {msg.get('message')} (in model server pid {pid}, "
                                             f"slot {slot.name}; traceback in {log_path or srv_log})", msg.get("traceback", ""))
                    elif op == "refused":
                        raise ServerError(f"server pid {pid} refused the request: {msg.get('reason')}", srv_log)
                    else:
                        raise ServerError(f"server pid {pid} sent an unknown message {op!r}", srv_log)
            except OSError as e:  # ConnectionResetError and friends: the server went away
                raise _died(pid, slot.name, func, srv_log) from e
            finally:
                conn.close()
    except (ServerError, RemoteJobError) as e:
        out.line(str(e), "ERROR")
        raise
    finally:
        for p in list(_CHILDREN):
            if p.poll() is not None:
                _CHILDREN.remove(p)
        out.close()


def preload_in_background(func: str, kwargs: dict, log_path: str, *, device: str, server_log: str,
                          expect_model: dict | None = None) -> threading.Thread:
    """Run ``func(**kwargs)`` in this run's model server from a thread of the calling process (a local Snakemake,
    from its ``onstart``): the server starts and loads the model while the jobs before the first model job
    (``sites``) run, so that job finds it loaded. The request holds the slot while it loads, so a model job that
    comes early waits for the load it would have paid anyway. Its lines go to ``log_path`` only; a failure is
    written there and left to the model jobs, which report their own."""
    def preload() -> None:
        try:
            # set_env=False: the calling Snakemake's CUDA_VISIBLE_DEVICES is what every later job inherits
            run_remote(func, kwargs, log_path, device=device, expect_model=expect_model, server_log=server_log,
                       echo=False, set_env=False)
        except Exception as e:  # noqa: BLE001 - the first model job meets the same problem and says it in one line
            with contextlib.suppress(OSError), open(log_path, "a") as f:
                f.write(f"preload failed (the model jobs load the model themselves): {e}\n")

    thread = threading.Thread(target=preload, daemon=True, name="model-preload")
    thread.start()
    return thread


def _died(pid: int, slot: str, func: str, srv_log: str | None) -> ServerError:
    for _ in range(50):  # the connection drops a moment before the process is gone
        if not pid_alive(pid):
            break
        time.sleep(0.02)
    state = "died" if not pid_alive(pid) else "dropped the connection"
    return ServerError(f"model server pid {pid} (slot {slot}) {state} during {func}", srv_log)


def _check_models(used: list[dict], expect: dict | None, pid: int, slot: str, srv_log: str | None) -> None:
    if expect is None:
        return
    for m in used:
        if m["path"] != expect["path"]:
            continue
        bad = [f"{k} {m[k]} != expected {expect[k]}" for k in ("fingerprint", "dtype") if expect.get(k) and m.get(k) != expect[k]]
        if expect.get("device") and expect["device"] != "auto" and not m["device"].startswith(expect["device"]):
            bad.append(f"device {m['device']} != expected {expect['device']}")
        if bad:
            raise ServerError(f"server pid {pid} (slot {slot}) used {m['path']} with {'; '.join(bad)}: result refused", srv_log,
                              "rerun; if the model changed on disk mid-run, rerun the jobs that used it")


def end_of_invocation(owner_pid: int) -> list[int]:
    """For the Snakefile's ``onsuccess``/``onerror``: stop the servers ``owner_pid`` owns, unless they are kept
    (``keep_s() > 0``): those stay up ``keep_s`` idle after this process exits, for the run's next invocation."""
    if keep_s() > 0:
        return []
    return stop_servers(owner_pid=owner_pid)


def stop_servers(owner_pid: int | None = None, workdir: str | None = None, all_scopes: bool = True,
                 timeout_s: float = 10.0) -> list[int]:
    """Stop this user's model servers (those owned by ``owner_pid`` and/or started in ``workdir``, or all); return their pids.

    For the Snakefile's ``onsuccess``/``onerror``: ``stop_servers(owner_pid=os.getpid())``.
    A running request is not waited for.
    """
    stopped = []
    for rec in list_servers(all_scopes=all_scopes):
        if not rec["alive"]:
            continue
        if owner_pid is not None and rec["owner_pid"] != owner_pid:
            continue
        if workdir is not None and os.path.realpath(rec["workdir"]) != os.path.realpath(workdir):
            continue
        if _stop_one(_connect("\0" + rec["socket"], 2.0), rec["pid"], force=True, timeout_s=timeout_s, start=rec.get("start")):
            stopped.append(rec["pid"])
        with contextlib.suppress(OSError):
            Path(rec["registry_file"]).unlink()
    return stopped


# ----------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m causal_kl.server", description=(
        "causal-kl model servers: one per (snakemake invocation, GPU slot), started on demand by model jobs "
        "(causal_kl.server.run_remote). --list shows this user's servers; --stop stops those started in the "
        "current directory (--all: every one of this user's), a server kept by model_server: {keep_s: N} included."))
    ap.add_argument("--list", action="store_true", help="list this user's servers (pid, slot, owner, workdir, log)")
    ap.add_argument("--stop", action="store_true", help="stop the servers started in this directory (with --all: all)")
    ap.add_argument("--all", action="store_true", help="with --stop: every server of this user, whatever its workdir")
    ap.add_argument("--json", action="store_true", help="with --list: JSON records")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--key", help=argparse.SUPPRESS)
    ap.add_argument("--slot", help=argparse.SUPPRESS)
    ap.add_argument("--owner", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--owner-start", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--log", help=argparse.SUPPRESS)
    ap.add_argument("--idle", type=float, default=DEFAULT_IDLE_S, help=argparse.SUPPRESS)
    ap.add_argument("--origin", default="job", help=argparse.SUPPRESS)
    ap.add_argument("--keep", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        return _serve_main(args)
    if args.stop:
        pids = stop_servers(workdir=None if args.all else os.getcwd())
        print(f"stopped {len(pids)} server(s){': ' + ' '.join(map(str, pids)) if pids else ''}")
        return 0
    if args.list:
        recs = [r for r in list_servers() if r["alive"]]
        if args.json:
            print(json.dumps(recs, indent=1))
            return 0
        if not recs:
            print(f"no causal-kl model servers (registry: {gpu.runtime_dir()})")
        for r in recs:
            kept = f"  kept (owner gone) up to {r['keep_s']:.0f} s idle" if r.get("kept") else ""
            print(f"pid {r['pid']}  slot {r['slot']}  owner {r['owner_pid']} ({r['owner_cmdline'][:60]})  "
                  f"workdir {r['workdir']}  up {time.time() - r['started']:.0f} s  log {r['log']}{kept}")
        return 0
    ap.print_help()
    return 0


if __name__ == "__main__":
    from causal_kl.server import main as _main  # the canonical module, not a second copy named __main__

    sys.exit(_main())
