"""Work ahead (causal_kl.ahead), through a real server and real clients: the server computes the next planned job
while no request waits, into staging files; the job's own request takes it only when it is exactly that job with
the same inputs; everything else is computed as before. Outputs are compared with the toy job run directly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from test_server import client, result_of, sandbox  # noqa: F401 - the sandbox fixture

from causal_kl.ahead import MAX_STAGED, entry_key, plan_path, ready_path, staging_path
from causal_kl.procs import proc_stat
from server_jobs import scale

FUNC = "server_jobs:scale"


def _entry(i: int, factor: float = 2.0, priority: int = 0) -> dict:
    kwargs = {"src": f"in/{i}.txt", "out": f"out/{i}.txt", "factor": factor}
    return {"func": FUNC, "kwargs": kwargs, "threads": None, "key": entry_key(FUNC, kwargs, None), "ready": True,
            "inputs": [kwargs["src"]], "outputs": {"out": kwargs["out"]}, "log": f"logs/{i}.log", "priority": priority}


def _write_plan(box, monkeypatch, entries: list[dict]) -> Path:
    monkeypatch.setenv("CAUSAL_KL_RUNTIME_DIR", str(box.rt))
    path = plan_path(box.owner.pid, proc_stat(box.owner.pid)[2])
    path.write_text(json.dumps({"cwd": str(box.work), "entries": entries}))
    return path


def _wait(cond, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def _events(box) -> list[dict]:
    f = next(box.rt.glob("*/servers/*.jsonl"))
    return [json.loads(line) for line in f.read_text().splitlines()]


def _staged(box) -> list[str]:
    return sorted(p.name for p in (box.work / "out").glob(".ahead-*"))


def test_the_server_computes_the_next_planned_jobs_and_only_the_exact_job_claims_them(sandbox, monkeypatch, tmp_path):
    box = sandbox
    (box.work / "in").mkdir()
    for i in range(5):
        (box.work / f"in/{i}.txt").write_text(" ".join(str(i + k / 10) for k in range(4)))
    entries = [_entry(i) for i in range(4)]
    entries[3]["ready"] = False  # waits for a job Snakemake has not finished: not computed ahead until it says so
    plan = _write_plan(box, monkeypatch, entries)
    ref = tmp_path / "ref"
    ref.mkdir()

    def direct(i: int, factor: float = 2.0) -> str:  # the toy job run here, in this process
        scale(str(box.work / f"in/{i}.txt"), str(ref / f"{i}.txt"), factor)
        return (ref / f"{i}.txt").read_text()

    def job(i: int, factor: float = 2.0):
        return result_of(client(box, FUNC, {"src": f"in/{i}.txt", "out": f"out/{i}.txt", "factor": factor},
                                log=str(box.work / f"job{i}.log")))

    job(0)  # computed when asked; then, no request waiting, the server takes the next ready planned jobs
    assert _wait(lambda: len(_staged(box)) == MAX_STAGED), _staged(box)
    assert not (box.work / "out/1.txt").exists() and not (box.work / "out/2.txt").exists()  # staged beside, hidden
    ahead = [e for e in _events(box) if e["event"] == "ahead"]
    assert [e["log"] for e in ahead] == ["logs/1.log", "logs/2.log"] and all(e["ok"] for e in ahead)

    # the exact job claims it: its output is put in place, its log has the computation's lines
    res = job(1)
    assert res["n"] == 4 and (box.work / "out/1.txt").read_text() == direct(1)
    log1 = (box.work / "job1.log").read_text()
    assert "was computed ahead (work-ahead #1" in log1 and "scaling 4 values of in/1.txt by 2.0" in log1, log1

    # its input changed after it was computed: the job's request computes it again, from the new input
    (box.work / "in/2.txt").write_text("7 8")
    with open(ready_path(plan), "a") as f:  # Snakemake finished what job 3 waited for (Planner.finished)
        f.write(entries[3]["key"] + "\n")
    job(2)
    assert (box.work / "out/2.txt").read_text() == direct(2)
    assert "was computed ahead" not in (box.work / "job2.log").read_text()
    server_log = next(box.rt.glob("*/servers/*.log")).read_text()
    assert "the job computed ahead for it is not used (an input changed after it was computed)" in server_log
    assert _wait(lambda: len(_staged(box)) == 1)

    # another job at the same output (other arguments) does not take it; what it wrote makes the staged one moot
    job(3, factor=3.0)
    assert (box.work / "out/3.txt").read_text() == direct(3, 3.0)
    assert _wait(lambda: _staged(box) == [])  # removed by the server, nothing left over

    reqs = [e for e in _events(box) if e["event"] == "request"]
    assert [e.get("ahead") for e in reqs] == [None, 1, None, None]
    assert [e["log"] for e in _events(box) if e["event"] == "ahead"] == ["logs/1.log", "logs/2.log", "logs/3.log"]


def test_staged_results_go_with_the_server_and_no_plan_means_no_work_ahead(sandbox, monkeypatch):
    box = sandbox
    (box.work / "in").mkdir()
    for i in range(3):
        (box.work / f"in/{i}.txt").write_text(f"{i} 1")
    result_of(client(box, FUNC, {"src": "in/0.txt", "out": "out/0.txt", "factor": 2.0}))
    time.sleep(1.0)
    assert _staged(box) == [] and not any(e["event"] == "ahead" for e in _events(box))  # no plan: as before

    _write_plan(box, monkeypatch, [_entry(1), _entry(2)])
    result_of(client(box, FUNC, {"src": "in/0.txt", "out": "out/x.txt", "factor": 2.0}))
    assert _wait(lambda: len(_staged(box)) == 2)
    pid = next(json.loads(p.read_text())["pid"] for p in box.rt.glob("*/servers/*.json"))
    assert all(n == Path(staging_path(f"out/{i}.txt")).name.replace(str(os.getpid()), str(pid))
               for n, i in zip(_staged(box), (1, 2)))
    box.owner.kill()  # the invocation ends: the server exits and removes what no job claimed
    box.owner.wait()
    assert _wait(lambda: _staged(box) == [], 20), _staged(box)


def test_two_servers_of_one_invocation_take_different_jobs_and_a_dead_invocations_plan_is_swept(tmp_path):
    from causal_kl.ahead import WorkAhead, remove_plan, sweep_plans

    work = tmp_path / "work"
    (work / "in").mkdir(parents=True)
    for i in range(3):
        (work / f"in/{i}.txt").write_text("1")
    plans = tmp_path / "plans"
    plans.mkdir()
    me = plans / f"{os.getpid()}-{proc_stat(os.getpid())[2]}.json"
    me.write_text(json.dumps({"cwd": str(work), "entries": [_entry(i) for i in range(3)]}))
    a, b = WorkAhead(), WorkAhead()  # two GPUs' servers, one plan
    assert a.next_entry(me)[0]["kwargs"]["out"] == "out/0.txt" and b.next_entry(me)[0]["kwargs"]["out"] == "out/1.txt"
    (work / "out").mkdir()
    (work / "out/2.txt").write_text("made by its job")  # done: nobody computes it ahead
    assert a.next_entry(me) is None and b.next_entry(me) is None
    # a plan whose Snakemake is gone (killed before its onerror) is swept with its marks; a live one stays
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    start = proc_stat(gone.pid)[2]
    gone.wait()
    dead = plans / f"{gone.pid}-{start}.json"
    dead.write_text("{}")
    (plans / f"{dead.stem}.abc.taken").write_text("")
    sweep_plans(plans)
    assert sorted(p.name for p in plans.iterdir()) == sorted([me.name, *(f"{me.stem}.{e['key']}.taken" for e in map(_entry, (0, 1)))])
    remove_plan(me)
    assert list(plans.iterdir()) == []


class _NL(list):
    """A Snakemake named list, as a planned job has them."""

    def __init__(self, **named):
        super().__init__(named.values())
        self.named = named

    def items(self):
        return self.named.items()


class _Job:
    def __init__(self, jobid: int, rule: str, out: str, inputs: dict, checkpoint: bool = False, priority: int = 0):
        self.jobid, self.is_checkpoint, self.priority, self.threads = jobid, checkpoint, priority, 1
        self.rule = type("Rule", (), {"name": rule, "snakefile": f"rules/{rule}.smk"})
        self.input, self.output = _NL(**inputs), _NL(out=out)
        self.params, self.wildcards, self.log = _NL(), _NL(shard=str(jobid)), _NL(log=f"logs/{jobid}.log")

    def is_group(self):
        return False


class _Dag:
    def __init__(self, deps: dict):
        self.dependencies = {j: {d: set() for d in ds} for j, ds in deps.items()}
        self.depending = {j: {k: set() for k, ds in deps.items() if j in ds} for j in deps}
        self.done: set = set()

    def needrun_jobs(self):
        return [j for j in self.dependencies if j not in self.done]

    def needrun(self, job):
        return True

    def finished(self, job):
        return job in self.done


def test_the_plan_marks_a_job_ready_only_once_snakemake_has_finished_every_job_it_waits_for(tmp_path):
    from causal_kl.ahead import Planner

    sites = _Job(1, "sites", "sites.json", {}, checkpoint=True)
    g0, g1 = (_Job(i, "gold", f"gold/{i}.parquet", {"sites": "sites.json"}, priority=10 - i) for i in (2, 3))
    agg = _Job(4, "gold_aggregate", "gold.parquet", {"a": "gold/2.parquet", "b": "gold/3.parquet"})
    floors = _Job(5, "patch_floors", "floors/5.parquet", {"gold": "gold.parquet"})
    dag = _Dag({sites: [], g0: [sites], g1: [sites], agg: [g0, g1], floors: [agg]})
    planner = Planner(tmp_path / "plan.json", {"run": "t"}, str(tmp_path))

    def plan():
        return {e["log"]: e for e in json.loads((tmp_path / "plan.json").read_text())["entries"]}

    def ready_list():
        f = tmp_path / "plan.ready"
        return f.read_text().split() if f.exists() else []

    (tmp_path / "gold").mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    left = [tmp_path / f"gold/.ahead-{gone.pid}.2.parquet", tmp_path / f"gold/.ahead-{os.getpid()}.3.parquet"]
    for f in left:  # a staging file of a server killed without its cleanup, and one of a live server
        f.write_text("")
    assert planner.write(dag) == 3  # the per-shard model jobs only; highest priority first
    assert [f.exists() for f in left] == [False, True]
    left[1].unlink()
    (tmp_path / "gold").rmdir()
    assert list(plan()) == ["logs/2.log", "logs/3.log", "logs/5.log"] and not any(e["ready"] for e in plan().values())
    assert plan()["logs/2.log"]["func"] == "causal_kl.jobs.gold:gold"
    dag.done.add(sites)
    planner.finished(dag, sites)  # the checkpoint: the plan is written again, its golds now wait for nothing
    assert [e["ready"] for e in plan().values()] == [True, True, False] and ready_list() == []
    for job in (g0, g1):
        dag.done.add(job)
        planner.finished(dag, job)
    assert ready_list() == []  # the floors wait for the aggregate, which is not a job the server runs
    dag.done.add(agg)
    planner.finished(dag, agg)
    assert ready_list() == [plan()["logs/5.log"]["key"]]
    planner.remove()
    assert list(tmp_path.iterdir()) == []


def test_a_planner_that_fails_says_so_once_and_leaves_the_run_alone(tmp_path, capsys):
    from causal_kl.ahead import Planner

    planner = Planner(tmp_path / "plan.json", {"run": "t"}, str(tmp_path))
    (tmp_path / "plan.json").write_text("{}")

    class Broken:
        def __getattr__(self, name):
            raise RuntimeError("a Snakemake this was not written for")

    job = _Job(1, "gold", "gold/1.parquet", {})
    planner.finished_safely(Broken(), job)  # what the DAG.finish wrapper calls: no exception reaches Snakemake
    planner.finished_safely(Broken(), job)
    err = capsys.readouterr().err
    assert err.count("causal-kl: warning: work ahead stopped (RuntimeError: a Snakemake this was not written for)") == 1
    assert not planner.active and list(tmp_path.iterdir()) == []  # the plan is gone: no server works ahead on it
