"""The analysis server (causal_kl.analysis_server): an analysis rule's script (run_analysis_rule) runs its job in a
child forked from a warm process, with the same fields and provenance as in its own process, one line for a bad
input, its own process free of the data libraries; with no server, the job runs in its own process.

Real analysis jobs through the server against the same jobs in their own process: tests/test_workflow_analysis.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from causal_kl import analysis_server
from causal_kl.jobs import job_provenance

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent("""
    import json, os, sys, types
    class Named(dict):  # Snakemake's named lists, as run_rule reads them
        def items(self):
            return super().items()
    config, target, out = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
    snakemake = types.SimpleNamespace(rule="table_offsets", config=config, input=Named(), output=Named(out=out),
                                      params=Named(), wildcards=Named(layer="3", shard="003"), log=["logs/job.log"],
                                      threads=1)
    from causal_kl.jobs import run_analysis_rule
    run_analysis_rule(target, snakemake)
    print("LOADED " + json.dumps(sorted(m for m in ("numpy", "pyarrow", "pandas", "matplotlib", "yaml")
                                        if m in sys.modules)))
    print("PID", os.getpid())
""")
CONFIG = {"run": "r", "device": "cpu", "model": {"path": "some/model", "layer": 3}}


@pytest.fixture
def work(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    env.pop(analysis_server.ADDRESS_ENV, None)
    return type("Work", (), {"dir": tmp_path, "env": env})


@pytest.fixture
def server(work, monkeypatch):
    """A server started as the Snakefile's onstart starts it (this process its owner), stopped afterwards."""
    monkeypatch.delenv(analysis_server.ADDRESS_ENV, raising=False)
    monkeypatch.setenv("PYTHONPATH", work.env["PYTHONPATH"])  # the toy jobs (tests/server_jobs.py)
    proc = analysis_server.start(str(work.dir / "logs/analysis_server.log"))
    address = os.environ[analysis_server.ADDRESS_ENV]
    deadline = time.monotonic() + 120
    while (sock := analysis_server.connect(address)) is None:
        assert proc.poll() is None and time.monotonic() < deadline, (work.dir / "logs/analysis_server.log").read_text()
        time.sleep(0.1)
    sock.close()
    work.env[analysis_server.ADDRESS_ENV] = address
    yield proc
    analysis_server.stop(proc)


def _job(work, target: str, out: str = "o/shard_003.json"):
    return subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(CONFIG), target, out], cwd=work.dir, env=work.env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("with_server", [True, False])
def test_a_job_runs_in_a_child_of_the_server_with_its_fields_and_provenance_and_without_one_in_its_own_process(
        work, request, with_server):
    proc = request.getfixturevalue("server") if with_server else None
    res = _job(work, "server_jobs:analysis_fields")
    assert res.returncode == 0, res.stderr
    got = json.loads((work.dir / "o/shard_003.json").read_text())
    # independent: the fields the fake rule names, and job_provenance's record of its config, rule and wildcards
    wildcards = {"layer": "3", "shard": "003"}
    assert {k: v for k, v in got.items() if k != "pid"} == {
        **wildcards, "provenance": job_provenance(CONFIG, "table_offsets", wildcards)}
    job_pid = int(res.stdout.split("PID ", 1)[1])
    loaded = json.loads(res.stdout.split("LOADED ", 1)[1].splitlines()[0])
    if with_server:  # a child of the server ran it; the job's own process imported no data library
        assert got["pid"] != job_pid and loaded == []
        assert proc.poll() is None
    else:
        assert got["pid"] == job_pid


def test_a_bad_input_is_one_line_from_the_job_and_in_its_log_and_a_bug_is_a_traceback(work, server):
    res = _job(work, "server_jobs:bad_fields")
    assert res.returncode == 1
    lines = [line for line in res.stderr.splitlines() if line.startswith("causal-kl:")]
    assert len(lines) == 1 and "Fix:" in lines[0], res.stderr
    assert lines[0].removeprefix("causal-kl: ") in (work.dir / "logs/job.log").read_text()
    res = _job(work, "server_jobs:bug_fields")
    assert res.returncode == 1 and "KeyError" in res.stderr
    assert "KeyError" in (work.dir / "logs/job.log").read_text()
    assert server.poll() is None  # the server serves on


def test_the_server_exits_with_the_process_that_started_it(work):
    code = textwrap.dedent("""
        import sys, time
        from causal_kl import analysis_server
        proc = analysis_server.start(sys.argv[1])
        print(proc.pid, flush=True)
    """)
    res = subprocess.run([sys.executable, "-c", code, str(work.dir / "server.log")], env=work.env, capture_output=True,
                         text=True, timeout=60)
    pid = int(res.stdout.split()[0])
    deadline = time.monotonic() + 60
    while Path(f"/proc/{pid}").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z":
        assert time.monotonic() < deadline, "the analysis server outlived its owner"
        time.sleep(0.2)


def test_a_killed_jobs_child_exits_and_the_server_serves_on(work, server):
    """Snakemake kills a job (Ctrl-C, --keep-going's end): the child forked for it does not run on."""
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, json.dumps(CONFIG), "server_jobs:sleep_fields", "o/pid"],
                            cwd=work.dir, env=work.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid_file = work.dir / "o/pid"
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    child = int(pid_file.read_text())
    assert child != proc.pid and Path(f"/proc/{child}").exists()
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists():
        assert time.monotonic() < deadline, "the child of a killed job ran on"
        time.sleep(0.05)
    assert _job(work, "server_jobs:analysis_fields").returncode == 0 and server.poll() is None
