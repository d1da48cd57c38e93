"""A real, single-node SLURM cluster on localhost, started and stopped by a test.

Written from ``shared/notes/slurm-single-node.md`` (Debian 12, root, no systemd):

- Debian's ``slurm-wlm`` + ``munge`` (and ``mariadb-server`` + ``slurmdbd`` for accounting)
  are installed with apt when missing, which needs root.
- Every file lives in one temp dir: keys, sockets, state, spool, logs, the database.
  ``/etc/slurm/slurm.conf`` is symlinked to the temp ``slurm.conf`` for the duration
  (the jobstep plugin strips ``SLURM_CONF`` before the inner ``srun``); whatever was
  there before is put back at the end.
- munged, (mariadbd, slurmdbd,) slurmctld and slurmd are started here, their PIDs kept,
  and stopped by PID in reverse order: SIGTERM, then SIGKILL after a timeout (a slurmd
  that lost its controller ignores SIGTERM). Nothing is ever stopped by name.
- The node has one pretend GPU: ``gres.conf`` maps ``gpu`` to ``/dev/null``.

This is test infrastructure, not part of the ``causal_kl`` package.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator, Sequence

SLURM_PACKAGES = ["slurm-wlm", "munge"]
ACCOUNTING_PACKAGES = ["mariadb-server", "slurmdbd"]
SLURM_BINARIES = ["slurmctld", "slurmd", "sbatch", "srun", "sinfo", "squeue", "sacct", "scontrol",
                  "scancel", "munged", "mungekey"]
ACCOUNTING_BINARIES = ["mariadbd", "mariadb-install-db", "mariadb", "slurmdbd", "sacctmgr"]
ETC_SLURM_CONF = Path("/etc/slurm/slurm.conf")
LOCK_PATH = Path("/tmp/causal-kl-slurm.lock")
DB_PASSWORD = "causal-kl-test"
CLUSTER_NAME = "causalkl"
PARTITIONS = ("cpu", "gpu")
"""Partition names of the test cluster; they match the placeholders in profiles/slurm/config.yaml."""


class HarnessUnavailable(RuntimeError):
    """The cluster cannot be set up here (not root, no apt): the test skips with this message."""


class HarnessError(RuntimeError):
    """The cluster was set up but misbehaved; carries the tail of the daemons' logs."""


def _sbin_path() -> str:
    """PATH with the sbin directories (daemons live there; a non-login shell may lack them)."""
    parts = os.environ.get("PATH", "").split(os.pathsep)
    for extra in ("/usr/local/sbin", "/usr/sbin", "/sbin"):
        if extra not in parts:
            parts.append(extra)
    return os.pathsep.join(parts)


def missing_binaries(accounting: bool) -> list[str]:
    """The SLURM/munge (and accounting) executables not found on PATH."""
    names = SLURM_BINARIES + (ACCOUNTING_BINARIES if accounting else [])
    return [n for n in names if shutil.which(n, path=_sbin_path()) is None]


def ensure_installed(accounting: bool, timeout_s: float = 900.0) -> float:
    """Install the Debian packages the cluster needs when any binary is missing.

    Returns the seconds spent installing (0.0 when nothing was missing). Raises
    HarnessUnavailable when something is missing and this process cannot apt-install it.
    A temporary ``policy-rc.d`` keeps apt from starting the packaged daemons.
    """
    missing = missing_binaries(accounting)
    if not missing:
        return 0.0
    if os.geteuid() != 0:
        raise HarnessUnavailable(f"SLURM test needs root to apt-get install {missing} (not root)")
    if shutil.which("apt-get") is None:
        raise HarnessUnavailable(f"SLURM test needs apt-get to install {missing}")
    packages = SLURM_PACKAGES + (ACCOUNTING_PACKAGES if accounting else [])
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", PATH=_sbin_path())
    policy = Path("/usr/sbin/policy-rc.d")
    added_policy = False
    t0 = time.monotonic()
    try:
        if not policy.exists():
            policy.write_text("#!/bin/sh\n# causal-kl tests: never start services from apt\nexit 101\n")
            policy.chmod(0o755)
            added_policy = True
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
        r = subprocess.run(install, env=env, capture_output=True, text=True, timeout=timeout_s)
        if r.returncode != 0:  # stale or absent package lists: update once, try again
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, text=True,
                           timeout=timeout_s, check=False)
            r = subprocess.run(install, env=env, capture_output=True, text=True, timeout=timeout_s)
        if r.returncode != 0:
            raise HarnessUnavailable(f"apt-get install {packages} failed: {r.stderr.strip()[-800:]}")
    finally:
        if added_policy:
            policy.unlink(missing_ok=True)
    still = missing_binaries(accounting)
    if still:
        raise HarnessUnavailable(f"after apt-get install, still missing: {still}")
    return time.monotonic() - t0


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def node_line(host: str, env: dict[str, str]) -> str:
    """This machine's ``NodeName=`` line from ``slurmd -C``, RealMemory at 90%, one GPU."""
    out = subprocess.run(["slurmd", "-C"], env=env, capture_output=True, text=True, timeout=30, check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("NodeName="))
    mem = int(re.search(r"RealMemory=(\d+)", line).group(1))
    line = re.sub(r"RealMemory=\d+", f"RealMemory={int(mem * 0.9)}", line)
    line = re.sub(r"^NodeName=\S+", f"NodeName={host}", line)
    return f"{line} Gres=gpu:1 State=UNKNOWN"


@dataclass
class Daemon:
    """A daemon this harness started: its name (for messages), process and log file."""

    name: str
    proc: subprocess.Popen
    log: Path


@dataclass
class SlurmCluster:
    """A running single-node cluster rooted at ``root``; use :func:`slurm_cluster` to get one."""

    root: Path
    host: str
    accounting: bool
    env: dict[str, str]
    munge_dir: Path = Path("/nonexistent")
    daemons: list[Daemon] = field(default_factory=list)
    start_seconds: float = 0.0
    install_seconds: float = 0.0

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    def run(self, args: Sequence[str], timeout_s: float = 30.0, check: bool = True) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster."""
        r = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout_s)
        if check and r.returncode != 0:
            raise HarnessError(f"{' '.join(args)} exited {r.returncode}: {r.stderr.strip()}\n{self.log_tail()}")
        return r

    def node_state(self) -> str:
        r = self.run(["sinfo", "-h", "-o", "%T"], check=False)
        return r.stdout.strip() if r.returncode == 0 else ""

    def sacct(self, job_ids: Sequence[str], fields: str = "JobID,JobName,State,ExitCode,AllocTRES") -> list[dict[str, str]]:
        """One dict per job allocation (``-X``) from accounting."""
        r = self.run(["sacct", "-X", "-n", "-P", "-o", fields, "-j", ",".join(job_ids)])
        names = fields.split(",")
        return [dict(zip(names, ln.split("|"))) for ln in r.stdout.splitlines() if ln.strip()]

    def controller_log(self) -> str:
        p = self.log_dir / "slurmctld.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def log_tail(self, n: int = 15) -> str:
        """The last lines of every daemon log, for failure messages."""
        out = []
        for p in sorted(self.log_dir.glob("*")):
            lines = p.read_text(errors="replace").splitlines()[-n:]
            out.append(f"--- {p.name}\n" + "\n".join(lines))
        return "\n".join(out)

    def wait_until(self, what: str, predicate, timeout_s: float, interval_s: float = 0.25) -> None:
        """Poll ``predicate`` until true; fail with the daemons' logs after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for d in self.daemons:
                if d.proc.poll() is not None:
                    raise HarnessError(f"{d.name} exited ({d.proc.returncode}) while waiting for {what}\n{self.log_tail()}")
            if predicate():
                return
            time.sleep(interval_s)
        raise HarnessError(f"timed out after {timeout_s:.0f}s waiting for {what}\n{self.log_tail()}")

    def start_daemon(self, name: str, args: Sequence[str]) -> Daemon:
        """Start a foreground daemon in its own session, stdout/stderr to ``log/NAME.out``."""
        log = self.log_dir / f"{name}.out"
        fh: IO = open(log, "ab")
        try:
            proc = subprocess.Popen(list(args), env=self.env, stdout=fh, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            fh.close()
        d = Daemon(name, proc, log)
        self.daemons.append(d)
        return d

    def stop(self, term_timeout_s: float = 10.0) -> None:
        """Cancel leftover jobs, then stop every daemon by PID in reverse start order."""
        if any(d.name == "slurmctld" and d.proc.poll() is None for d in self.daemons):
            with contextlib.suppress(Exception):
                self.run(["scancel", "--user", getpass.getuser()], check=False)
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline and self.run(["squeue", "-h", "-o", "%i"], check=False).stdout.strip():
                    time.sleep(0.5)
        for d in reversed(self.daemons):
            stop_process(d.proc, term_timeout_s)
        self.daemons.clear()


def stop_process(proc: subprocess.Popen, term_timeout_s: float = 10.0) -> None:
    """SIGTERM one process by PID, SIGKILL it if it is still there after ``term_timeout_s``."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=term_timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _left_by_a_killed_test(target: str) -> bool:
    """Whether a ``/etc/slurm/slurm.conf`` link points at one of these tests' clusters (a ``slurm.conf`` in a pytest
    temp dir) rather than at the machine's own configuration."""
    parts = Path(target).parts
    return Path(target).name == "slurm.conf" and any(p.startswith("pytest-of-") for p in parts)


@contextlib.contextmanager
def etc_slurm_conf_pointing_to(conf: Path) -> Iterator[None]:
    """Make ``/etc/slurm/slurm.conf`` a symlink to ``conf``; restore what was there on exit."""
    etc_dir = ETC_SLURM_CONF.parent
    created_dir = not etc_dir.exists()
    etc_dir.mkdir(parents=True, exist_ok=True)
    saved = etc_dir / f".slurm.conf.causal-kl-saved.{os.getpid()}"
    if ETC_SLURM_CONF.is_symlink() and _left_by_a_killed_test(os.readlink(ETC_SLURM_CONF)):
        # a test session killed before its cleanup left its link to a cluster that is gone: not the machine's own
        # config, and worth removing, as every `scontrol show config` (which the SLURM plugin runs when any
        # Snakemake starts, even a local run) then waits 9 s for that cluster's controller
        ETC_SLURM_CONF.unlink()
    had = ETC_SLURM_CONF.is_symlink() or ETC_SLURM_CONF.exists()
    if had:
        os.replace(ETC_SLURM_CONF, saved)
    try:
        ETC_SLURM_CONF.symlink_to(conf)
        yield
    finally:
        if ETC_SLURM_CONF.is_symlink() and os.readlink(ETC_SLURM_CONF) == str(conf):
            ETC_SLURM_CONF.unlink()
        if had:
            os.replace(saved, ETC_SLURM_CONF)
        elif created_dir:
            with contextlib.suppress(OSError):
                etc_dir.rmdir()


@contextlib.contextmanager
def machine_lock(timeout_s: float = 300.0) -> Iterator[None]:
    """One test cluster per machine at a time (it owns /etc/slurm/slurm.conf)."""
    with open(LOCK_PATH, "a+") as fh:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise HarnessError(f"another test cluster holds {LOCK_PATH} for over {timeout_s:.0f}s")
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_configs(root: Path, munge_dir: Path, host: str, accounting: bool, env: dict[str, str]) -> dict[str, int]:
    """Write slurm.conf, gres.conf (and slurmdbd.conf) under ``root``; return the ports chosen."""
    ports = {"slurmctld": free_port(), "slurmd": free_port(), "slurmdbd": free_port(), "mariadb": free_port()}
    munge_socket = munge_dir / "munge.socket.2"
    acct = (
        f"AccountingStorageType=accounting_storage/slurmdbd\n"
        f"AccountingStorageHost=localhost\n"
        f"AccountingStoragePort={ports['slurmdbd']}\n"
        # slurmctld ignores AuthInfo when talking to slurmdbd: name the munge socket here too
        f"AccountingStoragePass={munge_socket}\n"
        f"AccountingStorageTRES=gres/gpu\n"
        f"JobAcctGatherType=jobacct_gather/linux\n"
        f"JobAcctGatherFrequency=30\n"
    ) if accounting else "AccountingStorageType=accounting_storage/none\nJobAcctGatherType=jobacct_gather/none\n"
    partitions = "".join(
        f"PartitionName={p} Nodes={host} {'Default=YES ' if i == 0 else ''}MaxTime=INFINITE State=UP\n"
        for i, p in enumerate(PARTITIONS)
    )
    (root / "slurm.conf").write_text(
        "# written by tests/slurm_harness.py: a single-node test cluster\n"
        f"ClusterName={CLUSTER_NAME}\n"
        f"SlurmctldHost={host}(127.0.0.1)\n"
        f"SlurmctldPort={ports['slurmctld']}\n"
        f"SlurmdPort={ports['slurmd']}\n"
        "SlurmUser=root\nSlurmdUser=root\n"
        f"AuthType=auth/munge\nCredType=cred/munge\nAuthInfo=socket={munge_socket}\n"
        f"StateSaveLocation={root}/state\nSlurmdSpoolDir={root}/spool\n"
        f"SlurmctldPidFile={root}/slurmctld.pid\nSlurmdPidFile={root}/slurmd.pid\n"
        f"SlurmctldLogFile={root}/log/slurmctld.log\nSlurmdLogFile={root}/log/slurmd.log\n"
        "SlurmctldDebug=info\nSlurmdDebug=info\n"
        "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nMpiDefault=none\n"
        "SelectType=select/cons_tres\nSelectTypeParameters=CR_Core_Memory\n"
        # without it one job takes the node's whole memory and jobs run one at a time
        "DefMemPerCPU=1000\n"
        "SchedulerType=sched/backfill\nMinJobAge=300\nReturnToService=2\nMailProg=/bin/true\n"
        "SlurmctldTimeout=30\nSlurmdTimeout=30\nInactiveLimit=0\nKillWait=5\n"
        "GresTypes=gpu\n"
        + acct
        + node_line(host, env) + "\n"
        + partitions
    )
    # without File= slurmd drops the GPU and the node goes INVAL
    (root / "gres.conf").write_text(f"AutoDetect=off\nNodeName={host} Name=gpu File=/dev/null Count=1\n")
    if accounting:
        dbd = root / "slurmdbd.conf"
        dbd.write_text(
            f"AuthType=auth/munge\nAuthInfo=socket={munge_socket}\n"
            f"DbdHost=localhost\nDbdPort={ports['slurmdbd']}\nSlurmUser=root\n"
            f"PidFile={root}/slurmdbd.pid\nLogFile={root}/log/slurmdbd.log\nDebugLevel=info\n"
            "StorageType=accounting_storage/mysql\n"
            f"StorageHost=127.0.0.1\nStoragePort={ports['mariadb']}\n"
            f"StorageUser=slurm\nStoragePass={DB_PASSWORD}\nStorageLoc=slurm_acct_db\n"
        )
        dbd.chmod(0o600)
    return ports


def _start_munge(c: SlurmCluster) -> None:
    mdir = c.munge_dir
    key = mdir / "munge.key"
    c.run(["mungekey", "-c", "-k", str(key)])
    key.chmod(0o600)
    c.start_daemon("munged", [
        "munged", "-F", f"--socket={mdir / 'munge.socket.2'}", f"--key-file={key}",
        f"--pid-file={mdir / 'munged.pid'}", f"--seed-file={mdir / 'munge.seed'}",
        f"--log-file={c.log_dir / 'munged.log'}",
    ])
    c.wait_until("munged's socket", lambda: (mdir / "munge.socket.2").exists(), 15)


def _start_accounting(c: SlurmCluster, ports: dict[str, int]) -> None:
    db = c.root / "db"
    sock = c.root / "mariadb.sock"
    c.run(["mariadb-install-db", "--no-defaults", f"--datadir={db}", "--user=root",
           "--auth-root-authentication-method=socket", "--skip-test-db"], timeout_s=120)
    c.start_daemon("mariadbd", [
        "mariadbd", "--no-defaults", f"--datadir={db}", f"--socket={sock}", f"--port={ports['mariadb']}",
        "--bind-address=127.0.0.1", "--user=root", f"--pid-file={c.root / 'mariadb.pid'}",
        f"--log-error={c.log_dir / 'mariadb.err'}", "--skip-name-resolve", "--innodb-buffer-pool-size=16M",
    ])
    sql = ["mariadb", "--no-defaults", f"--socket={sock}", "-u", "root"]
    c.wait_until("mariadb", lambda: c.run(sql + ["-e", "SELECT 1"], check=False).returncode == 0, 60)
    grants = "".join(
        f"CREATE USER 'slurm'@'{h}' IDENTIFIED BY '{DB_PASSWORD}'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'{h}';"
        for h in ("127.0.0.1", "localhost")
    )
    c.run(sql + ["-e", grants])
    c.start_daemon("slurmdbd", ["slurmdbd", "-D"])
    c.wait_until("slurmdbd", lambda: c.run(["sacctmgr", "-n", "list", "cluster"], check=False).returncode == 0, 60)
    c.run(["sacctmgr", "-i", "add", "cluster", CLUSTER_NAME])


@contextlib.contextmanager
def slurm_cluster(root: Path, accounting: bool = True, idle_timeout_s: float = 60.0) -> Iterator[SlurmCluster]:
    """Install (if needed), configure and start a single-node cluster under ``root``; stop it on exit.

    Yields once ``sinfo`` reports the node idle. Raises HarnessUnavailable when this
    machine cannot host one (then the caller skips), HarnessError when it misbehaves.
    """
    install_seconds = ensure_installed(accounting)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    for sub in ("state", "spool", "log"):
        (root / sub).mkdir(exist_ok=True)
    host = socket.gethostname().split(".")[0]
    env = dict(os.environ, PATH=_sbin_path(), SLURM_CONF=str(root / "slurm.conf"))
    # munged wants execute permission for all on every directory above its socket, which a
    # pytest tmp dir (mode 700) lacks: the socket gets its own world-traversable dir in /tmp
    munge_dir = Path(tempfile.mkdtemp(prefix="causal-kl-munge-"))
    munge_dir.chmod(0o755)
    with machine_lock(), contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, munge_dir, True)
        c = SlurmCluster(root=root, host=host, accounting=accounting, env=env, install_seconds=install_seconds,
                         munge_dir=munge_dir)
        t0 = time.monotonic()
        ports = write_configs(root, munge_dir, host, accounting, env)
        with etc_slurm_conf_pointing_to(c.conf):
            try:
                _start_munge(c)
                if accounting:
                    _start_accounting(c, ports)
                c.start_daemon("slurmctld", ["slurmctld", "-D", "-i"])
                c.wait_until("slurmctld", lambda: "UP" in c.run(["scontrol", "ping"], check=False).stdout, 30)
                c.start_daemon("slurmd", ["slurmd", "-D"])
                c.wait_until("the node to be idle", lambda: c.node_state() == "idle", idle_timeout_s)
                c.start_seconds = time.monotonic() - t0
                yield c
            finally:
                c.stop()


@dataclass
class SnakemakeRun:
    """What one Snakemake call left behind: exit code, combined output, wall time."""

    returncode: int
    log: str
    seconds: float

    @property
    def timed_out(self) -> bool:
        # 124: TERM at the limit; 137 or -9: KILL after -k (timeout kills its own process group)
        return self.returncode in (124, 137, -9)

    def slurm_jobs(self) -> dict[str, str]:
        """``{slurm_jobid: rule}`` from the plugin's "submitted with SLURM jobid N (log: …/rule_R/N.log)"; a group
        job (one allocation running several jobs) is ``group:<group id>`` (its log is under ``group_<id>_<rules>/``;
        causal-kl's group ids hold no underscore)."""
        pat = re.compile(r"submitted with SLURM jobid (\d+) \(log: \S*/(rule|group)_([A-Za-z0-9_.-]+)/")
        return {m.group(1): (m.group(3) if m.group(2) == "rule" else f"group:{m.group(3).split('_')[0]}")
                for m in pat.finditer(self.log)}


STEADY_STATUS_CHECKS = """
import sys

import snakemake_executor_plugin_slurm as slurm


def steady(self):
    return self.workflow.executor_settings.init_seconds_before_status_checks


# the wait before the next round of status checks stays --slurm-init-seconds-before-status-checks: what the plugin
# sets after a round (+10 s while nothing finished) is not kept
slurm.Executor.next_seconds_between_status_checks = property(steady, lambda self, value: None)
from snakemake.cli import main

sys.argv = ["snakemake", *sys.argv[1:]]
main()
"""
"""``snakemake`` whose SLURM plugin checks the jobs' status at a steady interval. The plugin (2.8) waits 10 s longer
after each round of ``sacct`` that finds no job finished (``next_seconds_between_status_checks``, up to 180 s), which
suits a busy cluster; on the test cluster, whose jobs take seconds, it only waited (a level of the pipeline's jobs
was seen finished 16 or 40 s after its submission). No option sets it, so only that attribute is replaced: the
plugin's own ``check_active_jobs`` runs unchanged (the same ``sacct`` or ``squeue`` query, the same reading of each
state, cancelled jobs failing; its source, which causal_kl.cluster.see_cancelled_slurm_jobs inspects, too)."""


def snakemake_command(args: Sequence[str], timeout_s: float, steady_status_checks: bool = False) -> list[str]:
    """``snakemake ARGS`` under a hard ``timeout -k``: a hang fails fast. Snakemake can wait forever on a lost SLURM
    job while ignoring SIGTERM, hence SIGKILL 10 s after the TERM. ``steady_status_checks``: SLURM runs poll at a
    steady interval (``STEADY_STATUS_CHECKS``); Snakemake is still the child process of ``timeout``."""
    snakemake = [sys.executable, "-c", STEADY_STATUS_CHECKS] if steady_status_checks else ["snakemake"]
    return ["timeout", "-k", "10", str(int(timeout_s)), *snakemake, *args]


def start_snakemake(args: Sequence[str], cwd: Path, timeout_s: float, env: dict[str, str] | None,
                    log_path: Path, steady_status_checks: bool = False) -> subprocess.Popen:
    """Start ``snakemake ARGS`` in ``cwd`` (``snakemake_command``), its combined output going to ``log_path`` as it
    runs; ``finish_snakemake`` waits for it."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(snakemake_command(args, timeout_s, steady_status_checks), cwd=cwd, env=env,
                                stdout=log, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    proc.started = time.monotonic()
    proc.log_path = log_path
    return proc


def finish_snakemake(proc: subprocess.Popen, timeout_s: float) -> SnakemakeRun:
    """Wait for a ``start_snakemake`` call (past its own limit: SIGKILL) and return what it left behind."""
    try:
        proc.wait(timeout=timeout_s + 30)
    except subprocess.TimeoutExpired:
        stop_process(proc)
    return SnakemakeRun(proc.returncode, Path(proc.log_path).read_text(errors="replace"),
                        time.monotonic() - proc.started)


def run_snakemake(args: Sequence[str], cwd: Path, timeout_s: float, env: dict[str, str] | None = None,
                  log_path: Path | None = None, steady_status_checks: bool = False) -> SnakemakeRun:
    """Run ``snakemake ARGS`` in ``cwd`` (``snakemake_command``) to its end; the combined output is also written to
    ``log_path``."""
    t0 = time.monotonic()
    r = subprocess.run(snakemake_command(args, timeout_s, steady_status_checks), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       stdin=subprocess.DEVNULL)
    run = SnakemakeRun(r.returncode, r.stdout, time.monotonic() - t0)
    if log_path is not None:
        log_path.write_text(r.stdout)
    return run
