"""Kill-and-rerun safety: a Snakemake run SIGKILLed mid-shard leaves nothing partial behind.

A tiny sharded workflow whose shard job writes its parquet through
``causal_kl.io.write_parquet`` (temp file beside the target, renamed into place) after a
slow loop. The run is SIGKILLed, Snakemake and the job's process together (a node lost,
a job killed at its time limit), while one shard is half-way through. The test proves:

- no partial output is visible under ``results/``: the killed shard's output does not
  exist, every output that exists is complete (equal to an uninterrupted run's), and
  anything else left is a hidden ``.NAME.*.tmp`` file;
- ``snakemake --unlock`` then ``--rerun-incomplete`` recomputes only the killed shard
  (and the aggregate that needs it): the shards finished before the kill are not started
  again (ledger of job starts, unchanged mtimes);
- the final outputs equal those of an uninterrupted run in another directory.

The second test does the same to the pipeline's own ``patch_floors`` rule (tiny Gemma-3, naive
method so a shard takes a few seconds), SIGKILLed once a shard has logged 2 of its 4 documents.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from slurm_harness import run_snakemake

pytestmark = pytest.mark.slow

N_SHARDS = 3
STEPS = 8
STEP_S = 0.2
TIMEOUT_S = 120

SHARD_SCRIPT = r'''
"""One slow shard: STEPS steps of work, then one atomic parquet write."""
import sys, time
import numpy as np
from causal_kl.io import write_parquet

shard, out, ledger, progress, steps, step_s = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), float(sys.argv[6])
with open(ledger, "a") as fh:
    fh.write(f"start {shard}\n")
rng = np.random.default_rng(int(shard))
rows = []
for step in range(steps):
    rows.append(rng.standard_normal(4))
    with open(progress, "a") as fh:
        fh.write(f"{step}\n")
    time.sleep(step_s)
vectors = np.stack(rows).astype(np.float32)
write_parquet(out, {"shard": [int(shard)] * steps, "step": list(range(steps)), "vector": vectors})
with open(ledger, "a") as fh:
    fh.write(f"done {shard}\n")
'''

SNAKEFILE = f'''
SHARDS = [f"{{i:03d}}" for i in range({N_SHARDS})]

rule all:
    input:
        "results/k/all.parquet",

rule shard:
    output:
        shard="results/k/shard/shard_{{shard}}.parquet",
    log:
        "logs/k/shard_{{shard}}.log",
    params:
        progress="logs/k/shard_{{shard}}.progress",
    shell:
        "{sys.executable} shard.py {{wildcards.shard}} {{output.shard}} ledger.txt {{params.progress}} "
        "{STEPS} {STEP_S} > {{log}} 2>&1"

rule aggregate:
    input:
        shards=expand("results/k/shard/shard_{{shard}}.parquet", shard=SHARDS),
    output:
        all="results/k/all.parquet",
    run:
        from causal_kl.io import concat_parquet

        concat_parquet(list(input.shards), output.all)
'''


def make_workflow(dest: Path) -> Path:
    dest.mkdir(parents=True)
    (dest / "Snakefile").write_text(SNAKEFILE)
    (dest / "shard.py").write_text(SHARD_SCRIPT)
    return dest


def ledger(wf: Path) -> list[tuple[str, str]]:
    p = wf / "ledger.txt"
    return [tuple(ln.split()) for ln in p.read_text().splitlines()] if p.exists() else []


def descendants(pid: int) -> list[int]:
    """PIDs of every process below ``pid`` (children first found via /proc/*/stat)."""
    parents: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def sigkill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a process and all its descendants, by PID, as a lost node would."""
    victims = [proc.pid] + descendants(proc.pid)
    for pid in victims:
        try:
            os.kill(pid, signal.SIGSTOP)  # freeze first so nothing finishes or respawns in between
        except ProcessLookupError:
            pass
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


def wait_mid_shard(wf: Path, proc: subprocess.Popen, timeout_s: float = 90) -> str:
    """Wait until two shards are done and a third is between 1/4 and 3/4 of its steps; return it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "snakemake finished before it could be killed"
        events = ledger(wf)
        done = {s for e, s in events if e == "done"}
        running = [s for e, s in events if e == "start" and s not in done]
        if len(done) >= 2 and running:
            prog = wf / f"logs/k/shard_{running[0]}.progress"
            steps = len(prog.read_text().split()) if prog.exists() else 0
            if STEPS // 4 <= steps <= 3 * STEPS // 4:
                return running[0]
        time.sleep(0.05)
    raise AssertionError(f"no shard reached mid-way in {timeout_s}s; ledger {ledger(wf)}")


def read_outputs(wf: Path) -> dict[str, object]:
    """Every non-hidden parquet file under results/ as a pyarrow table (without schema metadata)."""
    out = {}
    for p in sorted((wf / "results").rglob("*")):
        if p.is_file() and not p.name.startswith(".") and p.suffix == ".parquet":
            out[str(p.relative_to(wf))] = pq.read_table(p).replace_schema_metadata(None)
    return out


def test_sigkill_mid_shard_then_rerun_incomplete(tmp_path: Path) -> None:
    reference = make_workflow(tmp_path / "reference")
    r = run_snakemake(["--cores", "1"], reference, timeout_s=TIMEOUT_S, log_path=tmp_path / "reference.log")
    assert r.returncode == 0, r.log[-3000:]
    expected = read_outputs(reference)
    assert len(expected) == N_SHARDS + 1

    wf = make_workflow(tmp_path / "killed")
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(["timeout", "-k", "10", str(TIMEOUT_S), "snakemake", "--cores", "1"], cwd=wf,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            killed = wait_mid_shard(wf, proc)
            before = {s: (wf / f"results/k/shard/shard_{s}.parquet").stat().st_mtime_ns
                      for e, s in ledger(wf) if e == "done"}
            sigkill_tree(proc)
        finally:
            if proc.poll() is None:
                sigkill_tree(proc)

    # nothing partial is visible: the killed shard has no output, what exists is complete
    assert not (wf / f"results/k/shard/shard_{killed}.parquet").exists()
    assert not (wf / "results/k/all.parquet").exists()
    after_kill = read_outputs(wf)
    assert set(after_kill) == {f"results/k/shard/shard_{s}.parquet" for s in before}
    for name, table in after_kill.items():
        assert table.equals(expected[name]), name
    leftovers = [p for p in (wf / "results").rglob("*") if p.is_file() and str(p.relative_to(wf)) not in after_kill]
    assert all(p.name.startswith(f".shard_{killed}.parquet.") and p.name.endswith(".tmp") for p in leftovers), leftovers

    # a SIGKILLed snakemake leaves its lock: unlock, then rerun what was incomplete
    u = run_snakemake(["--unlock", "--cores", "1"], wf, timeout_s=60)
    assert u.returncode == 0, u.log[-2000:]
    r2 = run_snakemake(["--cores", "1", "--rerun-incomplete"], wf, timeout_s=TIMEOUT_S,
                       log_path=tmp_path / "rerun.log")
    assert r2.returncode == 0, r2.log[-3000:]

    starts: dict[str, int] = {}
    for event, shard in ledger(wf):
        if event == "start":
            starts[shard] = starts.get(shard, 0) + 1
    for s, mtime in before.items():  # finished before the kill: not recomputed
        assert starts[s] == 1, (s, starts)
        assert (wf / f"results/k/shard/shard_{s}.parquet").stat().st_mtime_ns == mtime
    assert starts == {**{s: 1 for s in before}, killed: 2}, starts  # only the killed shard ran again
    assert len(before) == N_SHARDS - 1

    final = read_outputs(wf)
    assert set(final) == set(expected)
    for name, table in final.items():
        assert table.equals(expected[name]), name


def test_sigkill_real_patch_shard_then_rerun_incomplete(tmp_path: Path, gemma3_dir, corpus_path) -> None:
    """The same guarantees on the pipeline's own patch_floors rule, killed inside its second shard."""
    from workflow_helpers import copy_workflow, run_snakemake as run_wf, tiny_config, write_config

    sites = {"positions_per_doc": 2, "min_position": 50, "max_length": 256, "max_sites": 16, "shard_size": 8}
    # the shard is killed while its own job computes it (its log shows it half-way): with the server working ahead
    # the next shard would be computed before its job starts, its lines reaching the log only when it is claimed
    cfg = tiny_config(corpus_path, gemma3_dir, sites=sites, patch={"method": "naive"}, model_server={"work_ahead": False})
    cfg["corpus"]["rows"] = [0, 8]
    wf = copy_workflow(tmp_path / "killed")
    write_config(wf, cfg)
    run_wf(wf, "results/t/L2/conditions/choices.parquet", "results/t/L2/conditions/mean.parquet")
    reference = tmp_path / "reference"
    import shutil

    shutil.copytree(wf, reference)
    run_wf(reference, "results/t/L2/patch.json")
    expected = read_outputs(reference)

    floors = wf / "results/t/L2/span1/patch/floors"
    logs = [wf / f"logs/t/L2/span1/patch/floors/shard_{i:03d}.log" for i in range(2)]
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(["timeout", "-k", "10", str(4 * TIMEOUT_S), sys.executable, "-m", "snakemake", "--cores", "1",
                                 "results/t/L2/patch.json"], cwd=wf, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
        try:
            deadline = time.monotonic() + 4 * TIMEOUT_S
            killed = None
            while killed is None:  # the first shard that is half-way (2 of its 4 documents) and not finished
                assert proc.poll() is None, "snakemake finished before it could be killed"
                assert time.monotonic() < deadline, "no patch shard got half-way"
                for i, lg in enumerate(logs):
                    if lg.exists() and "document 2/4 done" in lg.read_text() and "document 4/4 done" not in lg.read_text():
                        killed = f"{i:03d}"
                time.sleep(0.02)
            done_before = {p.name: p.stat().st_mtime_ns for p in floors.glob("shard_*.parquet")}
            sigkill_tree(proc)
        finally:
            if proc.poll() is None:
                sigkill_tree(proc)

    assert not (floors / f"shard_{killed}.parquet").exists() and not (wf / "results/t/L2/patch.json").exists()
    assert all(p.name.startswith(".") for p in floors.iterdir() if p.name not in done_before)
    for name in done_before:  # what exists after the kill is complete
        assert read_outputs(wf)[f"results/t/L2/span1/patch/floors/{name}"].equals(expected[f"results/t/L2/span1/patch/floors/{name}"])
    run_wf(wf, "--unlock")
    out = run_wf(wf, "--rerun-incomplete", "results/t/L2/patch.json")
    assert out.count("rule patch_floors:") == 2 - len(done_before)  # the killed shard (and one never started)
    for name, mtime in done_before.items():
        assert (floors / name).stat().st_mtime_ns == mtime
    final = read_outputs(wf)
    for name in ("results/t/L2/span1/patch/floors/shard_000.parquet", "results/t/L2/span1/patch/floors/shard_001.parquet",
                 "results/t/L2/span1/patch/floors.parquet"):
        assert final[name].equals(expected[name]), name
