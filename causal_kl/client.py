"""The model server's client: what a model job does to run its function in its GPU slot's model server.

A model job calls ``run_remote(func, kwargs, log)``, which

1. finds the owner (the Snakemake process the server must not outlive, ``procs.find_owner``),
2. takes a GPU slot (``causal_kl.gpu``: one GPU per job, ``CUDA_VISIBLE_DEVICES`` set) that no
   other run's server is using (``_take_slot``: two runs on one box share the slots; another run's
   server is stopped only once that run has ended or left it unused for ``CAUSAL_KL_SERVER_HANDOVER``
   seconds, default 30, so the slot changes hands at most once per stage of a run; until then the
   job waits without holding the slot, and says for whose server),
3. connects to that (owner, slot)'s server, starting it if absent (``connect_or_start``, the one spawn-and-wait:
   race-free under a spawn lock, and the abstract socket name can be bound only once; a server that does not
   listen in time is killed),
4. checks the server's identity (protocol, causal_kl code version and source digest, torch
   version, Python executable): a stale server is stopped and replaced,
5. sends the request and relays the server's log lines for it to stderr and the job's log,
6. returns the function's (JSON) result, or raises: a ``CausalKLError`` as the server reported
   it, ``RemoteJobError`` for any other exception (traceback in the log), ``ServerError`` when
   the server died or misbehaved (one line: pid, slot, server log).

Also here: a cluster allocation's server started at parse time (``prestart_servers``), the local preload
(``preload_in_background``), the adoption of a kept server by its run's next invocation (``_try_adopt``) and
stopping servers (``stop_servers``, ``end_of_invocation``). The client imports neither torch nor transformers, nor
``causal_kl.server`` (the process it starts); they share ``causal_kl.protocol``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from causal_kl import gpu
from causal_kl.errors import CausalKLError
from causal_kl.procs import OWNER_ENV, Owner, find_owner, pid_alive, process_start_time, slurm_job_id
from causal_kl.protocol import (
    DATE_FORMAT,
    DEFAULT_HANDOVER_S,
    DEFAULT_IDLE_S,
    HANDOVER_ENV,
    IDLE_ENV,
    KEEP_ENV,
    RemoteJobError,
    ServerError,
    connect,
    identity,
    list_servers,
    recv_frame,
    registry_dir,
    send_frame,
    server_key,
    socket_name,
    step_scope,
)


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


def server_argv(key: str, slot: gpu.Slot, owner: Owner, log_path: str, idle_s: float, origin: str) -> list[str]:
    """The command line of the server of (``owner``, ``slot``) under ``key`` (``python -m causal_kl.server --serve``)."""
    return [sys.executable, "-m", "causal_kl.server", "--serve", "--key", key, "--slot", slot.name,
            "--owner", str(owner.pid), "--owner-start", str(owner.start), "--log", log_path, "--idle", str(idle_s),
            "--origin", origin, "--keep", str(keep_s())]


_CHILDREN: list[subprocess.Popen] = []  # spawned servers (polled now and then so none lingers as a zombie)


def _tail(path: str, n: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def spawn_and_wait(argv: list[str], slot: gpu.Slot, name: str, log_path: str, start_timeout_s: float,
                   what: str) -> tuple[socket.socket, subprocess.Popen]:
    """Start a server process (``argv``, seeing only ``slot``'s GPU, its output appended to ``log_path``, in a session
    of its own so that it outlives the caller) and wait until it listens at socket ``name``: a connection to it
    and the process. ``what`` names it in the errors: a process that exits first is a ``ServerError`` with its log's
    last lines; one that does not listen within ``start_timeout_s`` is killed (and reaped) first, so that no server
    this call gave up on comes up later on the slot's GPU behind the caller's back.
    """
    env = dict(os.environ)
    env["CUDA_VISIBLE_DEVICES"] = slot.gpu if slot.gpu is not None else ""
    pkg_root = str(Path(__file__).resolve().parent.parent)
    if Path(pkg_root).name not in ("site-packages", "dist-packages"):
        env["PYTHONPATH"] = os.pathsep.join([pkg_root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.pop(OWNER_ENV, None)
    env["PYTHONUNBUFFERED"] = "1"
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as logf:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True, cwd=os.getcwd(), env=env)
    _CHILDREN.append(proc)
    deadline = time.monotonic() + start_timeout_s
    while (conn := connect(name)) is None:
        if proc.poll() is not None:
            raise ServerError(f"{what} exited with code {proc.returncode} before listening: {_tail(log_path, 3)!r}",
                              log_path)
        if time.monotonic() > deadline:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):  # reaped, unless stuck in the kernel
                proc.wait(10)
            raise ServerError(f"{what} did not listen within {start_timeout_s:.0f} s: killed it "
                              f"(pid {proc.pid}); {_tail(log_path, 3)!r}", log_path)
        time.sleep(0.02)
    return conn, proc


def connect_or_start(key: str, slot: gpu.Slot, owner: Owner, log_path: str, idle_s: float, start_timeout_s: float,
                     origin: str = "job") -> tuple[socket.socket, subprocess.Popen | None]:
    """A connection to the server listening under ``key`` (``owner``'s on ``slot``), started first if none does: the
    connection, and the process when this call started it (None when one already listened).

    The one spawn-and-wait of both paths that start a server: a model job's (``run_remote``) and a cluster
    allocation's (``prestart_servers``). Under the key's spawn lock, so that two clients of one run start one server
    (the abstract socket name can be bound only once anyway). The caller owns the connection: it talks on it or
    closes it.
    """
    name = socket_name(key)
    conn = connect(name)
    if conn is not None:
        return conn, None
    with open(registry_dir() / f"{key}.spawn.lock", "w") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)
        conn = connect(name)
        if conn is not None:
            return conn, None
        what = (f"the allocation's model server for slot {slot.name}" if origin == "allocation"
                else f"a new server for slot {slot.name}")
        return spawn_and_wait(server_argv(key, slot, owner, log_path, idle_s, origin), slot, name, log_path,
                              start_timeout_s, what)


def _current_server(slot: gpu.Slot, owner: Owner, ident: dict, server_log: str | None, out: _JobLog,
                    start_timeout_s: float) -> tuple[socket.socket, dict]:
    """A model job's connection to its (owner, slot)'s server, current (this code's identity) and greeted: the
    allocation's server inside a SLURM job step, else the run's own, started when absent, replaced when stale."""
    key = server_key(owner, slot.name)
    allocation = _allocation_server(key, ident, out)
    if allocation is not None:
        return allocation
    log_path = str(Path(server_log).resolve()) if server_log else str(registry_dir() / f"{key}.log")
    idle_s = float(os.environ.get(IDLE_ENV, DEFAULT_IDLE_S))
    for _ in range(3):
        t = time.perf_counter()
        conn, proc = connect_or_start(key, slot, owner, log_path, idle_s, start_timeout_s)
        if proc is not None:
            out.line(f"started model server pid {proc.pid} on slot {slot.name} in {time.perf_counter() - t:.2f} s "
                     f"(owner pid {owner.pid}: {owner.how}); its log: {log_path}")
        try:
            send_frame(conn, {"op": "hello", "identity": ident})
            info = recv_frame(conn)
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
    if step_scope() == gpu.scope():
        return None  # not in a step of its own: the scope's own server is the allocation's
    conn = connect(socket_name(key, gpu.scope()))
    if conn is None:
        return None
    try:
        send_frame(conn, {"op": "hello", "identity": ident})
        info = recv_frame(conn)
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
        conn, proc = connect_or_start(server_key(owner, slot.name), slot, owner, log_path, idle, start_timeout_s,
                                      origin="allocation")
        conn.close()  # it listens before the first job step asks for it: that is all this needed of it
        if proc is not None:
            pids.append(proc.pid)
    return pids


def _stop_one(conn: socket.socket | None, pid: int, force: bool, timeout_s: float = 10.0, start: int | None = None) -> bool:
    """Ask a server to exit, then SIGTERM, then SIGKILL; True once it is gone."""
    if conn is not None:
        with contextlib.suppress(OSError, ValueError):
            send_frame(conn, {"op": "shutdown", "force": force})
            recv_frame(conn)
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
        send_frame(conn, {"op": "adopt", "owner_pid": owner.pid, "owner_start": owner.start, "owner_how": owner.how,
                     "identity": ident, "workdir": os.getcwd(), "keep_s": keep_s()})
        reply = recv_frame(conn)
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
            conn = connect("\0" + rec["socket"], 2.0)
        except OSError:  # a full backlog: it is there, and slow
            if pid_alive(rec["owner_pid"], rec.get("owner_start")):
                return rec, {"op": "hello", "busy": "not answering"}
            conn = None
        info = None
        if conn is not None:
            try:
                conn.settimeout(10.0)
                send_frame(conn, {"op": "hello"})
                info = recv_frame(conn)
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
            conn, info = _current_server(slot, owner, ident, server_log, out, start_timeout_s)
            if expect_model is not None:
                from causal_kl.checkpoints import stat_fingerprint

                expect = {"path": model_path, "fingerprint": stat_fingerprint(model_path), "dtype": expect_model.get("dtype"),
                          "device": expect_model.get("device")}
            pid, srv_log = info["pid"], info.get("log")
            out.line(f"{func} -> model server pid {pid} (slot {slot.name}{', busy: queued' if info.get('busy') else ''}; "
                     f"slot wait {slot.waited_s:.2f} s, connect {time.perf_counter() - t0:.2f} s)")
            try:
                send_frame(conn, {"op": "run", "func": func, "kwargs": kwargs, "cwd": os.getcwd(), "threads": threads,
                             "identity": ident, "expect": expect, "log": log_path,
                             "client": {"process_start": process_start_time(), "entered": entered, "sent": time.time()}})
                while True:
                    msg = recv_frame(conn)
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
        if _stop_one(connect("\0" + rec["socket"], 2.0), rec["pid"], force=True, timeout_s=timeout_s, start=rec.get("start")):
            stopped.append(rec["pid"])
        with contextlib.suppress(OSError):
            Path(rec["registry_file"]).unlink()
    return stopped
