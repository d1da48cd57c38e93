"""The analysis server: one warm process per local Snakemake invocation that has imported the analysis jobs'
libraries once (pandas, pyarrow, matplotlib, the job modules of envs/analysis.yaml's rules) and forks one child per
analysis job (issue #32 item 5: the analysis tail).

Every job after the run's last model request is an analysis job (tables, statistics, figures, the report: they all
read the patch files), and on a small run each such job's process spent most of its second of CPU importing those
libraries, 26 jobs on 2 cores. Here the job's own process (its ``script:``, ``causal_kl.jobs.run_analysis_rule``)
imports only Snakemake's script preamble, sends the rule's fields to the server and waits; a forked child runs the
same job function with the same arguments and the job's own log file, exactly as ``run_rule`` would, so the outputs
are the same. Each job still is its own Snakemake job, with its own files, log and rerun.

Started from the Snakefile's ``onstart`` (``start``) in a local run that executes jobs without conda environments
(``CAUSAL_KL_ANALYSIS_SERVER=0`` turns it off); its address reaches the jobs in ``ADDRESS_ENV``; it imports when the
first job connects. A job that finds no server (none started, gone) runs its function in its own process, as
before. The server exits with the Snakemake process that started it (its parent), or on ``stop``; a child whose job's
process went away (Snakemake killed the job) exits too.
"""

from __future__ import annotations

import argparse
import importlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from causal_kl.protocol import recv_frame, send_frame  # the model server's framing (length + JSON)

ADDRESS_ENV = "CAUSAL_KL_ANALYSIS_SERVER"
"""The server's address (an abstract unix socket name), set by ``start`` for the jobs the invocation spawns; ``0``
before the invocation starts: no server."""

PRELOAD = ("causal_kl.jobs.tables", "causal_kl.jobs.statistics", "causal_kl.jobs.figures", "causal_kl.jobs.report",
           "scipy.stats")
"""What the server imports (once, when the first job connects): the job modules of the analysis rules (pandas,
pyarrow, numpy, matplotlib with them) and scipy.stats, which the statistics import inside their functions."""

def connect(address: str | None) -> socket.socket | None:
    """A connection to the server at ``address``, or None (no address, or nothing listening there)."""
    if not address or address == "0":
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect("\0" + address)
    except OSError:
        sock.close()
        return None
    return sock


def start(log_path: str) -> subprocess.Popen | None:
    """Start this invocation's analysis server (a child of this process) and point the jobs it spawns at it; None
    when ``CAUSAL_KL_ANALYSIS_SERVER=0`` says not to. A job that starts before it listens runs in its own process."""
    if os.environ.get(ADDRESS_ENV) == "0":
        return None
    address = f"causal-kl-analysis-{os.getpid()}-{secrets.token_hex(6)}"
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        proc = subprocess.Popen([sys.executable, "-m", "causal_kl.analysis_server", "--serve", address,
                                 "--owner", str(os.getpid())],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, close_fds=True)
    os.environ[ADDRESS_ENV] = address
    return proc


def stop(proc: subprocess.Popen | None, timeout_s: float = 5.0) -> None:
    """Stop a server ``start`` returned (its running children finish their jobs)."""
    os.environ.pop(ADDRESS_ENV, None)
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_in_server(sock: socket.socket, target: str, fields: dict, config: dict, rule: str, wildcards: dict,
                  log_path: str | None) -> None:
    """Run job ``target`` (``"causal_kl.jobs.x:rule"``) in the server ``sock`` is connected to and wait for it; its
    ``CausalKLError`` is raised here again (the job's log already holds its line), any other failure as a
    ``RuntimeError`` with the child's traceback (also in the log)."""
    from causal_kl.errors import CausalKLError

    try:
        send_frame(sock, {"target": target, "fields": fields, "config": config, "rule": rule, "wildcards": wildcards,
                     "log": log_path, "cwd": os.getcwd(), "env": dict(os.environ)})
        reply = recv_frame(sock)
    finally:
        sock.close()
    if reply is None:
        raise RuntimeError(f"{target}: the analysis server ended before the job did (see the job's log {log_path})")
    if "error" in reply:
        raise CausalKLError(*reply["error"])
    if "crash" in reply:
        raise RuntimeError(f"{target} failed in the analysis server:\n{reply['crash']}")


def _run_child(conn: socket.socket) -> None:
    """In a forked child: run one job and reply how it went."""
    import logging
    import traceback

    from causal_kl.errors import CausalKLError
    from causal_kl.jobs import job_function, job_provenance, kwargs_for
    from causal_kl.logs import setup

    req = recv_frame(conn)
    if req is None:
        return

    def watch() -> None:  # the job's process went away (Snakemake killed the job): so does this child
        try:
            conn.recv(1)
        except OSError:
            pass
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()
    print(f"{time.strftime('%H:%M:%S')} {req['rule']}: {req['target']} in child {os.getpid()}", flush=True)
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    setup(req["log"])
    log = logging.getLogger("causal_kl")
    try:
        func = job_function(req["target"])
        func(**kwargs_for(func, req["fields"], lambda: job_provenance(req["config"], req["rule"], req["wildcards"])))
        reply: dict = {"ok": True}
    except CausalKLError as e:
        log.error("%s", e)
        reply = {"error": (e.file, e.field, e.problem, e.fix)}
    except BaseException:  # a bug: its traceback in the job's log, and back to the job
        log.exception("%s failed", req["target"])
        reply = {"crash": traceback.format_exc()}
    for h in logging.getLogger().handlers:
        h.flush()
    send_frame(conn, reply)


def serve(address: str, owner: int, poll_s: float = 1.0) -> int:
    """The server: listen at ``address``, import ``PRELOAD`` when the first job connects (not at the invocation's
    start, where it would take CPU from the ``sites`` job and the model's load, nor in an invocation with no analysis
    job), fork a child per connection; exit when its parent is no longer ``owner`` (the Snakemake process that
    started it)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind("\0" + address)
    sock.listen(128)
    sock.settimeout(poll_s)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    print(f"analysis server {os.getpid()} listening at {address}", flush=True)
    imported = False
    while os.getppid() == owner:
        try:
            conn, _ = sock.accept()
        except socket.timeout:
            continue
        conn.settimeout(None)
        if not imported:  # the jobs that connect meanwhile wait in the listen queue
            t0 = time.time()
            for module in PRELOAD:
                importlib.import_module(module)
            imported = True
            print(f"imported {', '.join(PRELOAD)} in {time.time() - t0:.1f} s", flush=True)
        if os.fork() == 0:
            code = 1
            try:
                sock.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                _run_child(conn)
                code = 0
            finally:
                os._exit(code)
        conn.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="causal-kl's analysis server (started by the Snakefile's onstart)")
    ap.add_argument("--serve", metavar="ADDRESS", required=True)
    ap.add_argument("--owner", type=int, required=True, help="the pid of the process that started it")
    args = ap.parse_args(argv)
    return serve(args.serve, args.owner)


if __name__ == "__main__":
    sys.exit(main())
