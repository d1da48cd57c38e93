"""Work ahead (causal_kl.ahead), through a real server and real clients: the server computes the next planned job
while no request waits, into staging files; the job's own request takes it only when it is exactly that job with
the same inputs; everything else is computed as before. Outputs are compared with the toy job run directly."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from test_server import client, result_of, sandbox  # noqa: F401 - the sandbox fixture

from causal_kl.ahead import MAX_STAGED, entry_key, plan_path, staging_path
from causal_kl.procs import proc_stat
from server_jobs import scale

FUNC = "server_jobs:scale"


def _entry(i: int, factor: float = 2.0, priority: int = 0) -> dict:
    kwargs = {"src": f"in/{i}.txt", "out": f"out/{i}.txt", "factor": factor}
    return {"func": FUNC, "kwargs": kwargs, "threads": None, "key": entry_key(FUNC, kwargs, None),
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
    entries[3]["inputs"].append("in/not-yet.txt")  # not ready: never computed ahead
    _write_plan(box, monkeypatch, entries)
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

    # another job at the same output (other arguments) does not take it; the staged file is left for its own job
    (box.work / "in/2.txt").write_text("7 8")  # and then its input changes: the computed result is stale
    job(2, factor=3.0)
    assert (box.work / "out/2.txt").read_text() == direct(2, 3.0)
    (box.work / "out/2.txt").unlink()
    job(2)
    assert (box.work / "out/2.txt").read_text() == direct(2)  # recomputed from the new input, not the staged one
    assert "was computed ahead" not in (box.work / "job2.log").read_text()
    server_log = next(box.rt.glob("*/servers/*.log")).read_text()
    assert "the job computed ahead for it is not used (an input changed after it was computed)" in server_log
    assert not (box.work / "out/3.txt").exists() and _staged(box) == []  # 3 waits for an input; nothing left over

    reqs = [e for e in _events(box) if e["event"] == "request"]
    assert [e.get("ahead") for e in reqs] == [None, 1, None, None]


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
