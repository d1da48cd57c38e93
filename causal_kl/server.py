"""The model server: one process per (Snakemake invocation, GPU slot) that keeps models loaded and runs job functions.

Why not Snakemake's ``service()`` jobs: a service group runs all its consumers at once with
the sum of their resources, and when one consumer reruns the service reruns and so does
every consumer (both seen with Snakemake 9.27), which would undo shard-level reruns. Here a
model job stays an ordinary job and sends its function to this process (``causal_kl.client.run_remote``:
the owner, the slot, the spawn, the handover between runs); this module is the process itself
(``python -m causal_kl.server --serve``, started by the client) and the command line
(``python -m causal_kl.server --list | --stop [--all]``). The wire format, identity and registry are
``causal_kl.protocol``; the owner it must not outlive is found by ``causal_kl.procs``.

Inside the server, job functions get models from ``causal_kl.models.get_model`` (a process-wide cache), so a model
is loaded once per server. One request runs at a time; others queue; a request's log lines and prints are relayed to
its client, and a request whose client has gone is abandoned at its next line.

Lifetime: the server exits when its owner exits (pidfd, else 1 s polls), after
``CAUSAL_KL_SERVER_IDLE`` seconds without a request (default 600), on ``shutdown``
(``client.stop_servers``, ``python -m causal_kl.server --stop``) or SIGTERM. Kept servers (``model_server: {keep_s: N}``,
``CAUSAL_KL_SERVER_KEEP``; never inside a SLURM allocation): when the owner exits the server stays up until it
has been idle N s; a client of the same run's next invocation (same workdir, code identity and model) adopts it
(``adopt``: it takes the new owner and listens under the new owner's key as well), so that invocation finds
the model loaded; any other run stops it as a server whose run has ended (``client._hand_over``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from causal_kl import gpu
from causal_kl.ahead import WorkAhead, discard, fingerprints, plan_path
from causal_kl.errors import CausalKLError
from causal_kl.jobs import job_function
from causal_kl.procs import Owner, cmdline, proc_stat, slurm_job_id
from causal_kl.protocol import (
    DATE_FORMAT,
    DEFAULT_IDLE_S,
    LOG_FORMAT,
    identity,
    json_default,
    list_servers,
    recv_frame,
    registry_dir,
    send_frame,
    server_key,
    socket_name,
    step_scope,
    write_json_atomic,
)

log = logging.getLogger(__name__)
_conn_log = logging.getLogger("causal_kl.server.conn")  # connection chatter: server log only, never relayed to a job


class RequestAbandoned(BaseException):
    """Raised inside a job function (at its next log line or print) once its client has gone."""


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


class _Kept:
    """The request of a job computed ahead (``causal_kl.ahead``): its log lines are kept for the job's own request."""

    def __init__(self, lines: list[str]):
        self.lines = lines
        self.gone = threading.Event()

    def relay(self, line: str) -> None:
        self.lines.append(line)


class _Request:
    def __init__(self, conn: socket.socket, send_lock: threading.Lock, thread_id: int):
        self.conn, self.send_lock, self.thread_id = conn, send_lock, thread_id
        self.gone = threading.Event()
        self.done = threading.Event()

    def relay(self, line: str) -> None:
        if not self.gone.is_set():
            try:
                send_frame(self.conn, {"op": "log", "line": line}, self.send_lock)
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
        self.ahead = WorkAhead()  # the next planned shard jobs, computed while Snakemake starts their processes
        self.ahead_running = False  # a work-ahead thread is on (``_work_ahead``)
        self.n_ahead = 0
        self.last_activity = time.monotonic()
        self.stopping = threading.Event()
        self.registry_file = registry_dir() / f"{key}.json"
        self.events = events_path(log_path)

    def record(self, event: str, **fields: Any) -> None:
        """Append one JSON line to the server's event records (start, load, request): what tests and benchmarks
        read to count model loads per allocation and the time between model requests. One ``write`` per line on an
        ``O_APPEND`` file, so servers of several allocations can share a run's record file."""
        rec = {"event": event, "time": time.time(), "pid": os.getpid(), "slot": self.slot, "host": socket.gethostname(),
               "slurm_job_id": slurm_job_id(), "scope": step_scope(), **fields}
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
                 "after its owner exits, code %s, log %s", os.getpid(), self.slot, step_scope(), self.owner.pid,
                 " ".join(cmdline(self.owner.pid))[:120], self.idle_s, self.keep_s, self.identity["code_version"],
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
        self.ahead.discard_all()
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
        write_json_atomic(self.registry_file, {
            "pid": os.getpid(), "start": proc_stat(os.getpid())[2], "slot": self.slot, "key": self.key,
            "owner_pid": self.owner.pid, "owner_start": self.owner.start, "owner_cmdline": " ".join(cmdline(self.owner.pid))[:300],
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
            with self.run_lock:  # what was computed ahead for that invocation is not left beside its outputs
                self.ahead.discard_all()
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
                msg = recv_frame(conn)
                if msg is None:
                    return
                op = msg.get("op")
                if op == "hello":
                    with self.state_lock:
                        busy = self.active
                        idle = 0.0 if busy else time.monotonic() - self.last_activity
                    models = sys.modules.get("causal_kl.models")
                    send_frame(conn, {"op": "hello", "pid": os.getpid(), "slot": self.slot, "key": self.key, "log": self.log_path,
                                 "identity": self.identity, "busy": busy, "idle_s": idle, "owner_pid": self.owner.pid,
                                 "kept": self.orphaned, "keep_s": self.keep_s,
                                 "models": models.resident_paths() if models is not None else []},
                          send_lock)
                elif op == "adopt":
                    send_frame(conn, self._adopt(msg, peer_pid), send_lock)
                elif op == "status":
                    from causal_kl import models

                    with self.state_lock:
                        busy = self.active
                    send_frame(conn, {"op": "status", "pid": os.getpid(), "busy": busy, "requests": self.n_requests,
                                 "models": models.resident_models() if "causal_kl.models" in sys.modules else []}, send_lock)
                elif op == "shutdown":
                    send_frame(conn, {"op": "bye", "pid": os.getpid()}, send_lock)
                    if msg.get("force"):
                        self._exit(f"forced shutdown by pid {peer_pid}", 0)
                    self.stopping.set()
                    return
                elif op == "run":
                    self._run(conn, msg, send_lock, peer_pid)
                else:
                    send_frame(conn, {"op": "error", "kind": "protocol", "message": f"unknown op {op!r}"}, send_lock)
        except (OSError, ValueError) as e:
            _conn_log.info("connection from pid %d ended: %s", peer_pid, e)
        finally:
            conn.close()

    def _run(self, conn: socket.socket, msg: dict, send_lock: threading.Lock, peer_pid: int) -> None:
        if msg.get("identity") != self.identity:
            send_frame(conn, {"op": "refused", "reason": f"identity differs: client {msg.get('identity')}, server {self.identity}"}, send_lock)
            return
        expect = msg.get("expect")
        if expect:
            from causal_kl.checkpoints import stat_fingerprint

            seen = stat_fingerprint(expect["path"])
            if seen != expect["fingerprint"]:
                send_frame(conn, {"op": "refused", "reason": f"{expect['path']} has fingerprint {seen} here, "
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
                    send_frame(conn, {"op": "started", "request": n, "pid": os.getpid(), "waited_s": waited}, send_lock)
                except OSError:
                    request.gone.set()
                kept, why = self.ahead.claim(msg["func"], msg.get("kwargs", {}), msg.get("threads"), msg.get("cwd"))
                if why is not None:
                    log.info("request #%d: the job computed ahead for it is not used (%s): computing it now", n, why)
                if kept is not None:
                    reply = self._claim(request, msg, n, peer_pid, kept)
                else:
                    reply = self._execute(request, msg, n, peer_pid)
                request.done.set()
                if reply is not None and not request.gone.is_set():
                    try:
                        send_frame(conn, reply, send_lock)
                    except OSError:
                        _conn_log.info("request #%d: its client left before the reply", n)
        finally:
            with self.state_lock:
                self.active -= 1
                self.last_activity = time.monotonic()
            self._start_work_ahead()

    # -- work ahead (causal_kl.ahead)
    def _start_work_ahead(self) -> None:
        """With no request waiting, compute the invocation's next planned shard jobs until one comes."""
        with self.state_lock:
            if self.active or self.ahead_running or self.orphaned or self.stopping.is_set():
                return
            self.ahead_running = True
        threading.Thread(target=self._work_ahead, daemon=True, name="work-ahead").start()

    def _work_ahead(self) -> None:
        try:
            while True:
                with self.run_lock:
                    with self.state_lock:
                        if self.active or self.orphaned or self.stopping.is_set():
                            self.ahead_running = False  # the request that waits restarts it when it is done
                            return
                    found = self.ahead.next_entry(plan_path(self.owner.pid, self.owner.start))
                    if found is None:
                        with self.state_lock:
                            self.ahead_running = False
                        return
                    self._compute_ahead(*found)
        except BaseException:
            with self.state_lock:
                self.ahead_running = False
            log.exception("work ahead stopped")

    def _compute_ahead(self, entry: dict, cwd: str) -> None:
        """Compute a planned job into staging files beside its outputs; keep it for its own request to claim."""
        self.n_ahead += 1
        k = self.n_ahead
        kwargs, moves = self.ahead.staged_kwargs(entry)
        for staged in moves.values():
            Path(cwd, staged).parent.mkdir(parents=True, exist_ok=True)
        before = fingerprints(cwd, entry["inputs"])
        lines: list[str] = []
        msg = {"func": entry["func"], "kwargs": kwargs, "cwd": cwd, "threads": entry["threads"], "log": entry["log"]}
        reply = self._execute(_Kept(lines), msg, k, None, event="ahead")
        if reply is not None and reply.get("op") == "done" and before is not None:
            self.ahead.keep(entry, cwd, moves, lines, reply, before, k, time.time())
        else:  # the job's own request computes it again and reports what went wrong
            discard({"cwd": cwd, "moves": moves})

    def _claim(self, request: _Request, msg: dict, n: int, peer_pid: int, kept: dict) -> dict | None:
        """The reply to a request whose job was computed ahead: its kept log lines, then its reply."""
        t, t_wall = time.perf_counter(), time.time()
        ok = False
        handler = _Forwarder(request)
        logging.getLogger().addHandler(handler)
        try:
            try:
                log.info("request #%d from pid %d: %s was computed ahead (work-ahead #%d, %.2f s, done %.2f s before this "
                         "request) while Snakemake started this job; its outputs are in place and its log follows", n,
                         peer_pid, msg["func"], kept["n"], kept["reply"].get("seconds", 0), t_wall - kept["finished"])
            finally:
                logging.getLogger().removeHandler(handler)
            for line in kept["lines"]:
                request.relay(line)
            ok = True
            return dict(kept["reply"])
        except RequestAbandoned:
            return None
        finally:
            self.record("request", request=n, func=msg["func"], start=t_wall, seconds=time.perf_counter() - t, ok=ok,
                        loads=0, client_pid=peer_pid, log=msg.get("log"), client=msg.get("client"), ahead=kept["n"])

    def _execute(self, request: _Request | _Kept, msg: dict, n: int, peer_pid: int | None,
                 event: str = "request") -> dict | None:
        """Run a request's function (``event="ahead"``: a planned job computed ahead, its lines kept)."""
        func_name = msg["func"]
        tag = {"request": n} if event == "request" else {"ahead": n}
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
            if event == "request":
                log.info("request #%d from pid %d: %s in %s (server pid %d, slot %s)", n, peer_pid, func_name,
                         msg.get("cwd"), os.getpid(), self.slot)
            else:
                log.info("work-ahead #%d: %s for %s, computed while Snakemake starts its job (server pid %d, slot %s)",
                         n, func_name, msg.get("log"), os.getpid(), self.slot)
            if msg.get("cwd"):
                os.chdir(msg["cwd"])
            if msg.get("threads"):
                import torch

                torch.set_num_threads(int(msg["threads"]))
            func = job_function(func_name)
            result = func(**msg.get("kwargs", {}))
            json.dumps(result, default=json_default)
            used = _model_usage()
            ok = True
            log.info("%s #%d done in %.2f s", "request" if event == "request" else "work-ahead", n, time.perf_counter() - t)
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
                self.record("load", **tag, **model)
            self.record(event, **tag, func=func_name, start=t_wall, seconds=time.perf_counter() - t, ok=ok,
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


# ----------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m causal_kl.server", description=(
        "causal-kl model servers: one per (snakemake invocation, GPU slot), started on demand by model jobs "
        "(causal_kl.client.run_remote). --list shows this user's servers; --stop stops those started in the "
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
        from causal_kl.client import stop_servers  # the CLI's one use of the client side

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
