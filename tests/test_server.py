"""The model server, through real processes: clients are subprocesses, servers are found in the registry.

Evidence is independent of the server's own say-so: pids checked in /proc, results compared
with direct calls in this process, loads counted from the lines in the logs, the server's
lifetime tied to a real ``snakemake`` run.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from causal_kl.errors import CausalKLError

ROOT = Path(__file__).resolve().parent.parent
LOAD_LINE = re.compile(r"causal-kl: loaded model (\S+) \((\w+), (\S+)\) in [\d.]+ s \[load #(\d+) in pid (\d+)\]")

CLIENT = textwrap.dedent("""
    import json, sys
    from causal_kl.errors import CausalKLError
    from causal_kl.client import run_remote
    from causal_kl.protocol import RemoteJobError
    args = json.loads(sys.argv[1])
    try:
        res = run_remote(args["func"], args["kwargs"], args.get("log"), **{"device": "cpu", **args.get("opts", {})})
    except Exception as e:  # what a job script does with an error: one line, exit 1
        if not isinstance(e, (CausalKLError, RemoteJobError)):
            import traceback; traceback.print_exc()
        print(f"ERR {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
    heavy = sorted(m for m in ("torch", "transformers") if m in sys.modules)
    print("RESULT " + json.dumps({"result": res, "client_imported": heavy}))
""")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _wait_dead(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def _registry(rt: Path) -> list[dict]:
    """The servers' records; a server whose owner just died removes its own, maybe between glob and read."""
    records = []
    for f in sorted(rt.glob("*/servers/*.json")):
        try:
            records.append(json.loads(f.read_text()))
        except FileNotFoundError:
            continue
    return records


@pytest.fixture
def sandbox(tmp_path):
    """A runtime dir of its own, a fake owner process, a working dir; every server left is killed by pid."""
    rt = tmp_path / "rt"
    work = tmp_path / "work"
    work.mkdir()
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    env = dict(os.environ, CAUSAL_KL_RUNTIME_DIR=str(rt), CAUSAL_KL_GPUS="", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]), CAUSAL_KL_SERVER_OWNER=str(owner.pid),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    for k in ("SLURM_JOB_ID", "SLURM_JOBID", "CUDA_VISIBLE_DEVICES"):
        env.pop(k, None)
    box = type("Sandbox", (), {"rt": rt, "work": work, "env": env, "owner": owner, "tmp": tmp_path})
    yield box
    owner.kill()
    owner.wait()
    for rec in _registry(rt):
        if _alive(rec["pid"]):
            os.kill(rec["pid"], signal.SIGKILL)


def client(box, func: str, kwargs: dict, log: str | None = None, env: dict | None = None, wait: bool = True,
           cwd: Path | None = None, **opts):
    args = json.dumps({"func": func, "kwargs": kwargs, "log": log, "opts": opts})
    proc = subprocess.Popen([sys.executable, "-c", CLIENT, args], cwd=cwd or box.work, env=env or box.env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def result_of(ret) -> dict:
    code, out, err = ret
    assert code == 0, f"client exited {code}:\n{err}\n{out}"
    payload = json.loads(out.split("RESULT ", 1)[1])
    assert payload["client_imported"] == [], "the client must not import torch/transformers"
    return payload["result"]


def test_errors_reach_the_job_as_one_line(sandbox, tmp_path):
    code, _, err = client(sandbox, "server_jobs:fail_user", {"path": "some/file.parquet"}, log="logs/user.log")
    direct = str(CausalKLError("some/file.parquet", "field", "something the user can fix", "fix it"))
    assert code == 1 and err.strip().splitlines()[-1] == f"ERR CausalKLError: {direct}"
    code, _, err = client(sandbox, "server_jobs:fail_bug", {}, log="logs/bug.log")
    last = err.strip().splitlines()[-1]
    assert code == 1 and re.fullmatch(r"ERR RemoteJobError: server_jobs:fail_bug raised KeyError: 'missing' "
                                      r"\(in model server pid \d+, slot cpu; traceback in logs/bug.log\)", last), last
    job_log = (sandbox.work / "logs/bug.log").read_text()
    assert "Traceback (most recent call last)" in job_log and "KeyError: 'missing'" in job_log
    # relative paths in kwargs resolve in the client's working directory
    written = result_of(client(sandbox, "server_jobs:write_file", {"path": "out/x.txt", "text": "hi"}))
    assert written == str(sandbox.work / "out/x.txt") and (sandbox.work / "out/x.txt").read_text() == "hi"


def test_client_killed_mid_request_does_not_wedge_the_server(sandbox):
    (sandbox.work / "out").mkdir()
    marker = str(sandbox.work / "out/started")
    a = client(sandbox, "server_jobs:slow", {"seconds": 60, "marker": marker}, log="logs/a.log", wait=False)
    _wait_for(lambda: Path(marker).exists(), 30)
    server_pid = int(Path(marker).read_text())
    os.kill(a.pid, signal.SIGKILL)
    a.wait()
    t = time.monotonic()
    r = result_of(client(sandbox, "server_jobs:add", {"a": 2, "b": 3}, log="logs/b.log"))
    assert r == {"sum": 5, "pid": server_pid}  # the same server, free again
    assert time.monotonic() - t < 15  # not after the abandoned request's 60 s
    assert not Path(marker + ".done").exists()
    assert "abandoned" in Path(_registry(sandbox.rt)[0]["log"]).read_text()


def test_server_killed_mid_request_fails_the_job_in_one_line_and_the_rerun_recovers(sandbox):
    (sandbox.work / "out").mkdir()
    marker = str(sandbox.work / "out/started")
    a = client(sandbox, "server_jobs:slow", {"seconds": 60, "marker": marker}, log="logs/a.log", wait=False)
    _wait_for(lambda: Path(marker).exists(), 30)
    server_pid = int(Path(marker).read_text())
    log_path = _registry(sandbox.rt)[0]["log"]
    os.kill(server_pid, signal.SIGKILL)
    _, err = a.communicate(timeout=30)
    assert a.returncode == 1
    last = err.strip().splitlines()[-1]
    assert last == (f"ERR ServerError: {log_path}: model server: model server pid {server_pid} (slot cpu) died during "
                    "server_jobs:slow. Fix: rerun: the next job starts a fresh server; if it fails again, read the server log")
    rerun = result_of(client(sandbox, "server_jobs:add", {"a": 1, "b": 1}, log="logs/rerun.log"))
    assert rerun["sum"] == 2 and rerun["pid"] != server_pid and _alive(rerun["pid"])
    assert [s["pid"] for s in _registry(sandbox.rt)] == [rerun["pid"]]


def test_a_stale_server_is_replaced(sandbox):
    """A server started from other code (a changed copy of the package) is stopped, not used."""
    old = sandbox.tmp / "old"
    shutil.copytree(ROOT / "causal_kl", old / "causal_kl", ignore=shutil.ignore_patterns("__pycache__"))
    with open(old / "causal_kl" / "stats.py", "a") as f:
        f.write("\n# an edit\n")
    old_env = dict(sandbox.env, PYTHONPATH=os.pathsep.join([str(old), str(ROOT / "tests")]))
    first = result_of(client(sandbox, "server_jobs:add", {"a": 1, "b": 2}, env=old_env))
    second = result_of(client(sandbox, "server_jobs:add", {"a": 1, "b": 2}, log="logs/new.log"))
    assert second["pid"] != first["pid"] and _wait_dead(first["pid"], 5)
    assert "is stale" in (sandbox.work / "logs/new.log").read_text()


def test_idle_timeout_list_and_stop(sandbox):
    env = dict(sandbox.env, CAUSAL_KL_SERVER_IDLE="1.5")
    pid = result_of(client(sandbox, "server_jobs:add", {"a": 0, "b": 0}, env=env))["pid"]
    listed = subprocess.run([sys.executable, "-m", "causal_kl.server", "--list"], env=env, cwd=sandbox.work,
                            capture_output=True, text=True, check=True).stdout
    assert f"pid {pid}  slot cpu  owner {sandbox.owner.pid}" in listed
    assert _wait_dead(pid, 10)  # idle: gone on its own
    assert _registry(sandbox.rt) == []
    pid = result_of(client(sandbox, "server_jobs:add", {"a": 0, "b": 0}))["pid"]
    out = subprocess.run([sys.executable, "-m", "causal_kl.server", "--stop"], env=sandbox.env, cwd=sandbox.work,
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"stopped 1 server(s): {pid}" and not _alive(pid)


def test_concurrent_clients_queue_on_one_server(sandbox):
    procs = [client(sandbox, "server_jobs:slow", {"seconds": 0.5}, wait=False) for _ in range(3)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        results.append(result_of((p.returncode, out, err)))
    assert len({r["pid"] for r in results}) == 1
    spans = sorted((r["t0"], r["t1"]) for r in results)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans  # one request at a time


def _changed_copy(box) -> Path:
    """A copy of the package with one edit: other code, as a second checkout would be (a different source digest)."""
    old = box.tmp / "old"
    shutil.copytree(ROOT / "causal_kl", old / "causal_kl", ignore=shutil.ignore_patterns("__pycache__"))
    with open(old / "causal_kl" / "stats.py", "a") as f:
        f.write("\n# an edit\n")
    return old


def test_two_runs_started_together_share_the_slot_without_stopping_each_others_server(sandbox, gemma3_dir):
    """Two runs on one box (two checkouts: other code, other workdir, other owner) start their model jobs together
    on the one slot. Neither stops the other's server while that run uses it: each run's jobs are all served by
    one server of its own that loaded the model once (two loads in all, not one per job); the run that came second
    waited, said for whose server, and took the slot over once, after the first run's jobs stopped coming."""
    from causal_kl.models import load_model

    text = "two runs share one box"
    second_owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        runs = {"a": dict(sandbox.env, PYTHONPATH=os.pathsep.join([str(_changed_copy(sandbox)), str(ROOT / "tests")]),
                          CAUSAL_KL_SERVER_HANDOVER="8"),
                "b": dict(sandbox.env, CAUSAL_KL_SERVER_OWNER=str(second_owner.pid), CAUSAL_KL_SERVER_HANDOVER="8")}
        owners = {"a": sandbox.owner.pid, "b": second_owner.pid}
        results: dict[str, list] = {r: [] for r in runs}

        def run(name: str) -> None:  # a run's model jobs, one after another, as one GPU slot lets Snakemake run them
            work = sandbox.tmp / f"work_{name}"
            work.mkdir()
            for i in range(3):
                kwargs = {"model_path": str(gemma3_dir), "text": text}
                results[name].append(client(sandbox, "server_jobs:model_logits", kwargs, log=f"logs/{i}.log",
                                            env=runs[name], cwd=work))

        threads = [threading.Thread(target=run, args=(n,)) for n in runs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(240)
        out = {n: [result_of(r) for r in rs] for n, rs in results.items()}
        logs = {n: [(sandbox.tmp / f"work_{n}/logs/{i}.log").read_text() for i in range(3)] for n in runs}
        pids = {n: {o["pid"] for o in outs} for n, outs in out.items()}
        # each run kept one server for all its jobs (none lost mid-run) and loaded the model once in it
        assert all(len(p) == 1 for p in pids.values()) and pids["a"] != pids["b"], pids
        assert {o["loads"] for outs in out.values() for o in outs} == {1}
        load_pids = sorted(int(l[4]) for ls in logs.values() for t in ls for l in LOAD_LINE.findall(t))
        assert load_pids == sorted(p for ps in pids.values() for p in ps), load_pids
        # the second run waited once, naming the first run's server and owner, then stopped it once, idle
        waits = {n: [l for t in ls for l in t.splitlines() if "waiting for another run's model server" in l]
                 for n, ls in logs.items()}
        assert sorted(len(w) for w in waits.values()) == [0, 1], waits
        second = next(n for n, w in waits.items() if w)
        first = "b" if second == "a" else "a"
        (first_pid,) = pids[first]
        assert f"pid {first_pid}, run of owner pid {owners[first]}" in waits[second][0], waits
        stops = [l for ls in logs.values() for t in ls for l in t.splitlines() if "stopping another run's model server" in l]
        assert len(stops) == 1 and f"pid {first_pid}," in stops[0] and "handing the slot over" in stops[0], stops
        assert _wait_dead(first_pid, 5)
        # independent: the same forward pass in this process
        direct = load_model(gemma3_dir)
        with torch.no_grad():
            expected = direct.model(input_ids=torch.tensor([direct.tokenizer(text).input_ids])).logits[0, -1].float()
        for o in out["a"] + out["b"]:
            assert torch.allclose(torch.tensor(o["logits"]), expected, atol=1e-5, rtol=0)
    finally:
        second_owner.kill()
        second_owner.wait()


@pytest.fixture
def second_run(sandbox):
    """The owner of a second run on the same box (as its Snakemake would be), and that run's client environment."""
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield type("Run", (), {"owner": owner, "env": dict(sandbox.env, CAUSAL_KL_SERVER_OWNER=str(owner.pid))})
    owner.kill()
    owner.wait()


def _visible(pid: int) -> str | None:
    """CUDA_VISIBLE_DEVICES of a live process, from /proc (what the process itself was started with)."""
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next((e.split(b"=", 1)[1].decode() for e in env if e.startswith(b"CUDA_VISIBLE_DEVICES=")), None)


def test_a_run_waits_for_a_live_runs_server_and_goes_on_once_that_run_ends(sandbox, second_run):
    """Another run's idle server, used just now, is not stopped: the job waits (saying for whose server, without
    holding the slot) and goes on, with a server of its own, as soon as that run ends."""
    first = result_of(client(sandbox, "server_jobs:add", {"a": 1, "b": 2},
                             env=dict(sandbox.env, CAUSAL_KL_SERVER_HANDOVER="600")))
    job = client(sandbox, "server_jobs:add", {"a": 2, "b": 2}, log="logs/b.log", wait=False,
                 env=dict(second_run.env, CAUSAL_KL_SERVER_HANDOVER="600"))
    log = sandbox.work / "logs/b.log"
    _wait_for(lambda: log.exists() and "waiting for another run's model server" in log.read_text(), 30)
    wait_line = next(l for l in log.read_text().splitlines() if "waiting for another run" in l)
    assert f"on slot cpu (pid {first['pid']}, run of owner pid {sandbox.owner.pid} " in wait_line, wait_line
    assert f"workdir {sandbox.work}" in wait_line
    # the slot is free while it waits: the first run's next job is served by its server at once
    again = result_of(client(sandbox, "server_jobs:add", {"a": 0, "b": 0}))
    assert again["pid"] == first["pid"] and job.poll() is None and _alive(first["pid"])
    sandbox.owner.kill()  # the first run ends: its server goes with it, and the waiting job takes the slot
    sandbox.owner.wait()
    out, err = job.communicate(timeout=60)
    second = result_of((job.returncode, out, err))
    assert second == {"sum": 4, "pid": second["pid"]} and second["pid"] != first["pid"] and _wait_dead(first["pid"], 5)
    assert "stopping another run" not in log.read_text() or "its run has ended" in log.read_text()


def test_a_server_running_a_request_is_not_stopped_by_another_run(sandbox, second_run):
    """A request still running in a server whose client was killed (the slot is free, the server is not): another
    run's job waits for it, however short its handover time, and stops the server only once the request is done."""
    (sandbox.work / "out").mkdir()
    marker = str(sandbox.work / "out/started")
    a = client(sandbox, "server_jobs:quiet", {"seconds": 6, "marker": marker}, wait=False)
    _wait_for(lambda: Path(marker).exists(), 30)
    server_pid = int(Path(marker).read_text())
    os.kill(a.pid, signal.SIGKILL)
    a.wait()
    second = result_of(client(sandbox, "server_jobs:add", {"a": 1, "b": 1}, log="logs/b.log",
                              env=dict(second_run.env, CAUSAL_KL_SERVER_HANDOVER="0.5")))
    assert Path(marker + ".done").exists() and second["pid"] != server_pid and _wait_dead(server_pid, 5)
    lines = (sandbox.work / "logs/b.log").read_text().splitlines()
    waits = [l for l in lines if "waiting for another run's model server" in l]
    assert len(waits) == 1 and f"(pid {server_pid}, " in waits[0] and "; running a request)" in waits[0], lines
    stops = [l for l in lines if "stopping another run's model server" in l]
    assert len(stops) == 1 and "handing the slot over" in stops[0], lines


def test_with_two_gpus_a_run_takes_the_one_no_other_run_is_using(sandbox, second_run):
    """Two (faked) GPUs: a run that finds another live run's server on the first GPU takes the second at once,
    neither waiting nor stopping that server; each server sees only its own GPU."""
    env = dict(sandbox.env, CAUSAL_KL_GPUS="0,1", CAUSAL_KL_SERVER_HANDOVER="600")
    first = result_of(client(sandbox, "server_jobs:add", {"a": 1, "b": 1}, env=env, device="auto"))
    t = time.monotonic()
    second = result_of(client(sandbox, "server_jobs:add", {"a": 1, "b": 1}, log="logs/b.log", device="auto",
                              env=dict(second_run.env, CAUSAL_KL_GPUS="0,1", CAUSAL_KL_SERVER_HANDOVER="600")))
    assert time.monotonic() - t < 60 and second["pid"] != first["pid"] and _alive(first["pid"])
    assert (_visible(first["pid"]), _visible(second["pid"])) == ("0", "1")
    text = (sandbox.work / "logs/b.log").read_text()
    assert "waiting for another run" not in text and "stopping another run" not in text, text


SNAKEFILE = textwrap.dedent('''
    import json
    from causal_kl.client import run_remote, stop_servers

    MODEL = config["model"]

    rule all:
        input: expand("out/run_{i}.json", i=range(2)), "out/script.json"

    rule run_job:
        output: "out/run_{i}.json"
        log: "logs/run_{i}.log"
        run:
            res = run_remote("server_jobs:model_logits", {"model_path": MODEL, "text": config["text"]}, log[0],
                             device="cpu", expect_model={"path": MODEL, "dtype": "float32"})
            with open(output[0], "w") as f:
                json.dump(res, f)

    rule script_job:
        output: "out/script.json"
        log: "logs/script.log"
        script: "job.py"
''')

SCRIPT = textwrap.dedent('''
    import json
    from causal_kl.client import run_remote

    res = run_remote("server_jobs:model_logits", {"model_path": snakemake.config["model"], "text": snakemake.config["text"]},
                     snakemake.log[0], device="cpu")
    with open(snakemake.output[0], "w") as f:
        json.dump(res, f)
''')


def test_a_real_snakemake_run_shares_one_server_and_one_load_and_the_server_exits_with_snakemake(sandbox, gemma3_dir):
    """run: jobs (each in a nested snakemake) and a script: job share one server and one model load; their
    results equal a direct forward pass in this process; when snakemake exits, the server does too."""
    from causal_kl.models import load_model

    text = "the model reads a state and writes its next token"
    (sandbox.work / "Snakefile").write_text(SNAKEFILE)
    (sandbox.work / "job.py").write_text(SCRIPT)
    env = {k: v for k, v in sandbox.env.items() if k != "CAUSAL_KL_SERVER_OWNER"}  # the owner is found, not given
    run = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "-q", "--config", f"model={gemma3_dir}",
                          f"text={text}"], cwd=sandbox.work, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    names = ["run_0", "run_1", "script"]
    outs = {n: json.loads((sandbox.work / f"out/{n}.json").read_text()) for n in names}
    pids = {o["pid"] for o in outs.values()}
    assert len(pids) == 1 and {o["loads"] for o in outs.values()} == {1}
    (server_pid,) = pids
    # independent: the same forward pass here, loaded the plain way
    direct = load_model(gemma3_dir)
    ids = torch.tensor([direct.tokenizer(text).input_ids])
    with torch.no_grad():
        expected = direct.model(input_ids=ids).logits[0, -1].float()
    for o in outs.values():
        assert torch.allclose(torch.tensor(o["logits"]), expected, atol=1e-5, rtol=0)
    # exactly one load line, from the server's pid, in exactly one job's log; the others reused the model
    job_logs = {n: (sandbox.work / f"logs/{n}.log").read_text() for n in names}
    loads = {n: LOAD_LINE.findall(t) for n, t in job_logs.items()}
    assert sorted(len(v) for v in loads.values()) == [0, 0, 1]
    assert [(l[0], l[1], l[4]) for v in loads.values() for l in v] == [(str(gemma3_dir), "float32", str(server_pid))]
    assert sum("reusing resident model" in t for t in job_logs.values()) == 2
    assert "outermost snakemake ancestor" in "".join(job_logs.values())
    # the server outlives no snakemake: its pid is gone (it noticed its owner exit), its registry entry too
    assert _wait_dead(server_pid, 10), "the server outlived snakemake"
    _wait_for(lambda: _registry(sandbox.rt) == [], 5)


def _wait_for(predicate, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize("argv, expected", [
    (["snakemake", "--cores", "2"], True),
    (["/usr/bin/python3", "-m", "snakemake", "--snakefile", "S"], True),
    (["/opt/venv/bin/python3.11", "-u", "/opt/venv/bin/snakemake", "--profile", "p"], True),
    (["python", "-X", "utf8", "-m", "snakemake"], True),
    (["python", "-c", "import snakemake"], False),
    (["/usr/bin/python3", "/w/.snakemake/scripts/tmpab12.patch_floors.py"], False),
    (["/usr/bin/bash", "-c", "snakemake --cores 1"], False),
    ([], False),
])
def test_is_snakemake(argv, expected):
    from causal_kl.procs import is_snakemake

    assert is_snakemake(argv) is expected


def test_owner_inside_a_slurm_allocation_is_the_allocations_snakemake(tmp_path):
    """Each SLURM job runs under its own srun step, not below the allocation's snakemake: the owner is found by
    scanning /proc for the snakemake running --executor slurm-jobstep with this SLURM_JOB_ID (seen on a real
    SLURM: a group of two jobs shared one server, which exited with the allocation's snakemake)."""
    fake = tmp_path / "snakemake"
    fake.write_text("import time\ntime.sleep(120)\n")
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "CAUSAL_KL_SERVER_OWNER"}
    other = subprocess.Popen([sys.executable, str(fake), "--executor", "slurm-jobstep"], env=dict(base, SLURM_JOB_ID="424243"))
    alloc = subprocess.Popen([sys.executable, str(fake), "--target-jobs", "a", "--executor", "slurm-jobstep", "--jobs", "1"],
                             env=dict(base, SLURM_JOB_ID="424242"))
    try:
        time.sleep(0.3)
        code = "from causal_kl.procs import find_owner; o = find_owner(); print(o.pid, o.how)"
        out = subprocess.run([sys.executable, "-c", code], env=dict(base, SLURM_JOB_ID="424242", PYTHONPATH=str(ROOT)),
                             capture_output=True, text=True, check=True).stdout.split(None, 1)
        assert int(out[0]) == alloc.pid and out[1].strip() == "SLURM job 424242's snakemake"
    finally:
        for p in (other, alloc):
            p.kill()
            p.wait()


ALLOCATION = textwrap.dedent("""
    # a cluster allocation's own Snakemake (the batch step): starts the allocation's server, then lives on
    import os, sys, time
    os.environ["CAUSAL_KL_SERVER_OWNER"] = str(os.getpid())
    from causal_kl.client import prestart_servers
    print("STARTED", prestart_servers("cpu", sys.argv[1]), flush=True)
    time.sleep(600)
""")

STEP_CLIENT = CLIENT.replace("from causal_kl.client import run_remote",
                             "import causal_kl.procs as procs\n"
                             "procs.slurm_step = lambda: '0'  # as in a job step's cgroup under proctrack/cgroup\n"
                             "from causal_kl.client import run_remote")


def test_job_steps_use_the_server_their_allocation_started(sandbox):
    """Under SLURM's proctrack/cgroup a server spawned inside a job step dies with the step: each model job of an
    allocation would load the model again. The allocation's Snakemake starts the server in the batch step
    (client.prestart_servers, at parse time); every job step of the allocation finds and uses that one."""
    env = dict(sandbox.env, SLURM_JOB_ID="4242")
    log = str(sandbox.work / "logs/model_server.log")
    alloc = subprocess.Popen([sys.executable, "-c", ALLOCATION, log], cwd=sandbox.work, env=env, text=True,
                             stdout=subprocess.PIPE)
    try:
        started = alloc.stdout.readline()
        assert started.startswith("STARTED [") and started.strip() != "STARTED []", started
        env["CAUSAL_KL_SERVER_OWNER"] = str(alloc.pid)  # what find_owner() says in a step: the allocation's Snakemake
        pids = set()
        for i in range(2):
            args = json.dumps({"func": "server_jobs:add", "kwargs": {"a": i, "b": 1}, "log": f"logs/step{i}.log"})
            proc = subprocess.run([sys.executable, "-c", STEP_CLIENT, args], cwd=sandbox.work, env=env, text=True,
                                  capture_output=True, timeout=120)
            pids.add(result_of((proc.returncode, proc.stdout, proc.stderr))["pid"])
        events = [json.loads(l) for l in Path(log).with_suffix(".jsonl").read_text().splitlines()]
        starts = [e for e in events if e["event"] == "start"]
        assert len(pids) == 1 and [e["pid"] for e in starts] == list(pids), (pids, starts)
        assert starts[0]["origin"] == "allocation" and starts[0]["scope"] == "slurm-4242", starts
        assert [e["scope"] for e in events if e["event"] == "request"] == ["slurm-4242"] * 2
        # no step spawned a server of its own
        assert [r["pid"] for r in _registry(sandbox.rt)] == list(pids)
    finally:
        alloc.kill()
        alloc.wait()
    assert _wait_dead(next(iter(pids))), "the allocation's server outlived its Snakemake"



# ----------------------------------------------------------------------------- the one spawn-and-wait (issue #30 item 3)
def test_a_started_server_that_does_not_listen_in_time_is_killed(tmp_path, monkeypatch):
    """client.connect_or_start, which both the model jobs and a cluster allocation start their servers with, gives up
    on a server that does not listen within the timeout and kills it: a fake server that never listens, its pid
    read from its own output, is gone from /proc (killed and reaped) when the one-line error comes."""
    from causal_kl import client, gpu
    from causal_kl.procs import Owner, proc_stat
    from causal_kl.protocol import ServerError

    monkeypatch.setenv("CAUSAL_KL_RUNTIME_DIR", str(tmp_path / "rt"))
    never = [sys.executable, "-c", "import os, time; print('fake server pid', os.getpid(), flush=True); time.sleep(600)"]
    monkeypatch.setattr(client, "server_argv", lambda *args: never)
    log = tmp_path / "server.log"
    owner = Owner(os.getpid(), proc_stat(os.getpid())[2], "test")
    slot = gpu.Slot("cpu", None, Path(os.devnull))
    with pytest.raises(ServerError, match=r"a new server for slot cpu did not listen within 2 s: killed it") as err:
        client.connect_or_start(f"never-{os.getpid()}", slot, owner, str(log), 60.0, start_timeout_s=2.0)
    assert "\n" not in str(err.value)
    pid = int(re.search(r"fake server pid (\d+)", log.read_text()).group(1))
    assert f"(pid {pid})" in str(err.value)
    assert not Path(f"/proc/{pid}").exists(), "the server that did not listen in time is still there"


def test_the_allocations_start_closes_its_probe_of_a_server_already_listening(tmp_path, monkeypatch):
    """prestart_servers finds the allocation's server already listening (a socket of this test's, bound at the name
    the server would have): it starts none, and closes the connection it probed with, which the server side sees
    as an end of stream; closed by the code, not left to the garbage collector (no ResourceWarning)."""
    import gc
    import socket
    import warnings

    from causal_kl import client
    from causal_kl.procs import find_owner
    from causal_kl.protocol import server_key, socket_name

    monkeypatch.setenv("CAUSAL_KL_RUNTIME_DIR", str(tmp_path / "rt"))
    monkeypatch.setenv("CAUSAL_KL_SERVER_OWNER", str(os.getpid()))  # this process is the allocation's Snakemake
    monkeypatch.setenv("SLURM_JOB_ID", f"7{os.getpid()}")
    monkeypatch.delenv("SLURM_JOBID", raising=False)
    monkeypatch.setattr(client, "spawn_and_wait", lambda *a, **k: pytest.fail("started a server beside a running one"))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_name(server_key(find_owner(), "cpu")))
    listener.listen(4)
    listener.settimeout(10)
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always", ResourceWarning)
            assert client.prestart_servers("cpu", str(tmp_path / "model_server.log")) == []
            gc.collect()
        conn, _ = listener.accept()
        conn.settimeout(10)
        assert conn.recv(1) == b"", "the probe connection was left open"
        conn.close()
        assert not [w for w in seen if issubclass(w.category, ResourceWarning)], [str(w.message) for w in seen]
    finally:
        listener.close()


# ----------------------------------------------------------------------------- kept servers (issue #32 item 4)
def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])


def _end(owner: subprocess.Popen) -> None:
    owner.kill()
    owner.wait()


def test_a_kept_server_outlives_its_owner_and_the_runs_next_invocation_adopts_it_with_the_model_loaded(sandbox, gemma3_dir):
    """Invocation 1 (keep 60 s) loads the model; its owner exits and the server stays. Invocation 2 (same workdir and
    code, a new owner, keep off) adopts it: same pid, no second load, logits equal to a direct forward here. With
    keep off the adopted server then goes when invocation 2's owner does."""
    from causal_kl.models import load_model

    srv_log = sandbox.tmp / "model_server.log"
    kept = dict(sandbox.env, CAUSAL_KL_SERVER_KEEP="60")
    first = result_of(client(sandbox, "server_jobs:model_logits", {"model_path": str(gemma3_dir), "text": "one route"},
                             env=kept, server_log=str(srv_log), expect_model={"path": str(gemma3_dir), "dtype": "float32"}))
    pid = first["pid"]
    assert first["loads"] == 1
    _end(sandbox.owner)
    _wait_for(lambda: any(r.get("kept") for r in _registry(sandbox.rt)), 10)
    assert _alive(pid), "a kept server went with its owner"
    second_owner = _sleeper()
    try:
        env2 = dict(sandbox.env, CAUSAL_KL_SERVER_OWNER=str(second_owner.pid))  # keep off: the default
        code, out, err = client(sandbox, "server_jobs:model_logits", {"model_path": str(gemma3_dir), "text": "a second route"},
                                env=env2, server_log=str(srv_log), expect_model={"path": str(gemma3_dir), "dtype": "float32"})
        second = result_of((code, out, err))
        assert second["pid"] == pid and second["loads"] == 1, "the next invocation loaded the model again"
        assert f"adopted the model server pid {pid}" in err
        direct = load_model(gemma3_dir)
        ids = torch.tensor([direct.tokenizer("a second route").input_ids])
        with torch.no_grad():
            expected = direct.model(input_ids=ids).logits[0, -1].float()
        assert torch.allclose(torch.tensor(second["logits"]), expected, atol=1e-5, rtol=0)
        (rec,) = _registry(sandbox.rt)
        assert (rec["pid"], rec["owner_pid"], rec["kept"]) == (pid, second_owner.pid, False)
        events = _events(srv_log.with_suffix(".jsonl"))
        assert [e["event"] for e in events if e["event"] in ("start", "load", "kept", "adopt")] == ["start", "load", "kept", "adopt"]
        assert [e["loads"] for e in events if e["event"] == "request"] == [1, 0]
    finally:
        _end(second_owner)
    assert _wait_dead(pid, 10), "keep off (the default): an adopted server must go with its new owner"


def test_a_kept_server_exits_after_keep_s_is_not_adopted_by_another_run_and_stop_stops_it(sandbox, tmp_path):
    """keep_s idle after the owner exits: gone. A kept server of another workdir is stopped (its run has ended), not
    adopted. ``python -m causal_kl.server --stop`` stops a kept one."""
    short = dict(sandbox.env, CAUSAL_KL_SERVER_KEEP="1")
    pid = result_of(client(sandbox, "server_jobs:add", {"a": 1, "b": 2}, env=short))["pid"]
    _end(sandbox.owner)
    _wait_for(lambda: any(r.get("kept") for r in _registry(sandbox.rt)), 10)
    assert _wait_dead(pid, 15), "a kept server outlived keep_s"

    owner = _sleeper()
    other_owner = _sleeper()
    try:
        env = dict(sandbox.env, CAUSAL_KL_SERVER_KEEP="60", CAUSAL_KL_SERVER_OWNER=str(owner.pid))
        pid = result_of(client(sandbox, "server_jobs:add", {"a": 1, "b": 2}, env=env))["pid"]
        _end(owner)
        _wait_for(lambda: any(r.get("kept") for r in _registry(sandbox.rt)), 10)
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        code, out, err = client(sandbox, "server_jobs:add", {"a": 1, "b": 2}, cwd=elsewhere,
                                env=dict(sandbox.env, CAUSAL_KL_SERVER_OWNER=str(other_owner.pid)))
        other = result_of((code, out, err))["pid"]
        assert other != pid and _wait_dead(pid, 10) and "kept for another run (another workdir" in err
        owner = _sleeper()
        env = dict(sandbox.env, CAUSAL_KL_SERVER_KEEP="60", CAUSAL_KL_SERVER_OWNER=str(owner.pid))
        _end(other_owner)
        pid = result_of(client(sandbox, "server_jobs:add", {"a": 1, "b": 2}, env=env))["pid"]
        _end(owner)
        _wait_for(lambda: any(r.get("kept") for r in _registry(sandbox.rt)), 10)
        listed = subprocess.run([sys.executable, "-m", "causal_kl.server", "--list"], env=sandbox.env, cwd=sandbox.work,
                                capture_output=True, text=True, check=True).stdout
        assert f"pid {pid}  slot cpu  owner {owner.pid}" in listed and "kept (owner gone) up to 60 s idle" in listed
        out = subprocess.run([sys.executable, "-m", "causal_kl.server", "--stop"], env=sandbox.env, cwd=sandbox.work,
                             capture_output=True, text=True, check=True).stdout
        assert out.strip() == f"stopped 1 server(s): {pid}" and _wait_dead(pid, 5)
    finally:
        _end(owner)
        _end(other_owner)


KEEP_SNAKEFILE = textwrap.dedent('''
    import json, os
    from causal_kl.config import model_server_keep_s
    from causal_kl.client import end_of_invocation, run_remote
    from causal_kl.protocol import KEEP_ENV

    os.environ[KEEP_ENV] = repr(model_server_keep_s(config))  # as rules/common.smk does
    MODEL = config["model"]

    rule all:
        input: expand("out/{route}.json", route=config["routes"])

    rule route:
        output: "out/{route}.json"
        log: "logs/{route}.log"
        run:
            res = run_remote("server_jobs:model_logits", {"model_path": MODEL, "text": wildcards.route}, log[0],
                             device="cpu", expect_model={"path": MODEL, "dtype": "float32"},
                             server_log="logs/model_server.log")
            with open(output[0], "w") as f:
                json.dump(res, f)

    onsuccess:
        end_of_invocation(os.getpid())

    onerror:
        end_of_invocation(os.getpid())
''')


def test_a_further_route_in_a_new_snakemake_invocation_finds_the_kept_model_and_keep_off_still_stops_it(sandbox, gemma3_dir):
    """Two snakemake invocations of one run, a route added in the second. The first has model_server: {keep_s: 60};
    the second's model timeline (from the server's own records) shows no server start and no load: it adopted the
    first's server. The second has model_server: true (the default), so it stops the server at its end."""
    from causal_kl.models import load_model
    from causal_kl.timeline import read_events, server_timeline

    (sandbox.work / "Snakefile").write_text(KEEP_SNAKEFILE)
    env = {k: v for k, v in sandbox.env.items() if k != "CAUSAL_KL_SERVER_OWNER"}
    timelines, pids = [], []
    for routes, block in ((["a"], "{keep_s: 60}"), (["a", "b"], "true")):
        cfg = sandbox.work / "run.yaml"
        cfg.write_text(f"model: {gemma3_dir}\nroutes: {json.dumps(routes)}\nmodel_server: {block}\n")
        t0 = time.time()
        run = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "-q", "--configfile", str(cfg)],
                             cwd=sandbox.work, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        timelines.append(server_timeline(read_events(sandbox.work / "logs/model_server.jsonl"), t0, time.time()))
        pids.append(json.loads((sandbox.work / f"out/{routes[-1]}.json").read_text())["pid"])
    assert len(set(pids)) == 1
    assert [(t["requests"], t["servers_started"], t["servers_adopted"], t["loads"]) for t in timelines] == [
        (1, 1, 0, 1), (1, 0, 1, 0)]
    assert not LOAD_LINE.findall((sandbox.work / "logs/b.log").read_text())
    assert "adopted the model server" in (sandbox.work / "logs/b.log").read_text()
    direct = load_model(gemma3_dir)
    for route in "ab":
        ids = torch.tensor([direct.tokenizer(route).input_ids])
        with torch.no_grad():
            expected = direct.model(input_ids=ids).logits[0, -1].float()
        got = json.loads((sandbox.work / f"out/{route}.json").read_text())["logits"]
        assert torch.allclose(torch.tensor(got), expected, atol=1e-5, rtol=0)
    assert _wait_dead(pids[0], 10), "model_server: true must stop the server at the end of the invocation"


def test_a_kept_server_is_adopted_only_by_its_own_run(tmp_path, monkeypatch):
    """What makes an ended run's kept server another run's: not kept, other code, another workdir, another model
    resident; each is refused before anything is sent (the caller then stops it as a server whose run has ended)."""
    from causal_kl.client import _try_adopt
    from causal_kl.procs import Owner

    monkeypatch.chdir(tmp_path)
    ident = {"protocol": 1, "code_version": "x", "source": "s"}
    rec = {"keep_s": 60, "identity": ident, "workdir": str(tmp_path)}
    info = {"op": "hello", "identity": ident, "models": ["/models/a"]}
    owner = Owner(os.getpid(), 0, "test")
    assert _try_adopt(None, dict(rec, keep_s=0), info, owner, ident, "/models/a") == "not kept"
    assert _try_adopt(None, rec, info, owner, dict(ident, source="t"), "/models/a") == "other code"
    assert _try_adopt(None, dict(rec, workdir=str(tmp_path / "other")), info, owner, ident, "/models/a") == "another workdir"
    assert _try_adopt(None, rec, info, owner, ident, "/models/b") == "another model (/models/a)"
def test_each_request_records_when_its_clients_process_started_and_called(sandbox):
    """The gap split of causal_kl.timeline stands on these: the client's process start (read here from /proc by the
    test itself, against wall clocks taken around the spawn) and its call of run_remote, both before the request."""
    t_spawn = time.time()
    pid = result_of(client(sandbox, "server_jobs:add", {"a": 1, "b": 2}, server_log=str(sandbox.work / "srv.log")))["pid"]
    t_done = time.time()
    events = [json.loads(line) for line in (sandbox.work / "srv.jsonl").read_text().splitlines()]
    (req,) = [e for e in events if e["event"] == "request"]
    c = req["client"]
    tick = 1.0 / os.sysconf("SC_CLK_TCK")
    assert t_spawn - 2 * tick <= c["process_start"] <= c["entered"] <= c["sent"] <= req["start"] <= t_done
    assert req["client_pid"] != pid


MODEL_RULE_SCRIPT = textwrap.dedent("""
    import json, sys, types
    class Named(dict):  # Snakemake's named lists, as run_rule reads them
        def items(self):
            return super().items()
    config = json.loads(sys.argv[1])
    snakemake = types.SimpleNamespace(rule="patch_route", config=config, input=Named(), output=Named(out="o/shard_003.json"),
                                      params=Named(), wildcards=Named(layer="3", shard="003"), log=["logs/job.log"], threads=1)
    from causal_kl.jobs import run_model_rule
    run_model_rule("server_jobs:write_fields", snakemake)
    print("LOADED " + json.dumps(sorted(m for m in ("numpy", "pyarrow", "pandas", "yaml", "jsonschema", "torch")
                                        if m in sys.modules)))
""")


@pytest.mark.parametrize("server", [True, False])
def test_a_model_rule_script_names_its_job_and_its_process_imports_no_data_libraries(sandbox, server):
    """run_model_rule (the per-shard model rules' scripts): through the server the job's own process imports none of
    numpy, pyarrow, pandas, yaml, jsonschema (their import was most of its start-up); the job gets the same fields
    and provenance as a direct call of the function with job_provenance's record, in the server or, with
    ``model_server: false``, in the process itself."""
    from causal_kl.jobs import job_provenance

    config = {"run": "r", "device": "cpu", "model": {"path": "some/model", "layer": 3}, "model_server": server}
    res = subprocess.run([sys.executable, "-c", MODEL_RULE_SCRIPT, json.dumps(config)], cwd=sandbox.work, env=sandbox.env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    loaded = json.loads(res.stdout.split("LOADED ", 1)[1])
    got = json.loads((sandbox.work / "o/shard_003.json").read_text())
    assert {k: v for k, v in got.items() if k != "pid"} == {
        "layer": "3", "shard": "003", "provenance": job_provenance(config, "patch_route", {"layer": "3", "shard": "003"})}
    if server:  # written by the server the registry lists
        assert loaded == [] and [r["pid"] for r in _registry(sandbox.rt)] == [got["pid"]]
    else:  # written by the job's own process: no server was started
        assert _registry(sandbox.rt) == []


def test_the_preload_runs_in_the_runs_server_and_leaves_the_callers_gpus_alone(sandbox, monkeypatch):
    """What a local Snakemake's onstart does (client.preload_in_background, a thread of its own process): the request
    runs in the server of the run's owner, its lines go to the preload's log only, and the caller's
    CUDA_VISIBLE_DEVICES, which every later job inherits, is not narrowed to the slot's GPU."""
    from causal_kl import gpu
    from causal_kl.client import preload_in_background

    for k, v in sandbox.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("CAUSAL_KL_GPUS", "0,1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setattr(gpu, "_original_visible", gpu._UNSET)
    monkeypatch.chdir(sandbox.work)
    log = sandbox.tmp / "model_preload.log"
    thread = preload_in_background("server_jobs:add", {"a": 2, "b": 3}, str(log), device="cuda",
                                   server_log=str(sandbox.tmp / "model_server.log"))
    thread.join(120)
    assert not thread.is_alive()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"
    text = log.read_text()
    assert "server_jobs:add done in the server" in text and "preload failed" not in text, text
    (rec,) = _registry(sandbox.rt)
    assert rec["owner_pid"] == sandbox.owner.pid and rec["cuda_visible_devices"] in ("0", "1")
