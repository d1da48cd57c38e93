"""profiles/slurm on a real single-node SLURM started by the test.

The cluster (tests/slurm_harness.py) has partitions named like the profile's placeholders
(`cpu`, `gpu`) and one pretend GPU, so the profile runs unchanged; the only test-only
overrides are a short first status check, kept as the interval between checks (the plugin's
growing wait only idled on jobs of seconds: slurm_harness.STEADY_STATUS_CHECKS), and the
account. Each test proves:

- the jobs went through SLURM: Snakemake logs "submitted with SLURM jobid N" per job and
  accounting (``sacct``) lists every one of those ids as COMPLETED;
- the GPU rules requested a GPU: their ``AllocTRES`` holds ``gres/gpu=1`` (and the job saw
  ``CUDA_VISIBLE_DEVICES=0``), the CPU rules' does not;
- the outputs equal a local ``--cores`` run of the same workflow;
- reruns stay per shard through SLURM: a deleted shard file reruns only its shard; an allocation cancelled mid-group
  (``scancel``) fails and is resubmitted while Snakemake runs on; and with Snakemake killed too, the README's
  ``--unlock`` and rerun redo only the shards the kill left unfinished.

Accounting (mariadb + slurmdbd) is on by default; ``CAUSAL_KL_SLURM_ACCOUNTING=0`` runs
the same checks in the plugin's squeue status mode, reading the GPU request from
slurmctld's log instead of sacct.
"""

from __future__ import annotations

import json
import os
import re
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

import fixtures

from workflow_helpers import copy_workflow
from slurm_harness import (HarnessUnavailable, SlurmCluster, finish_snakemake, run_snakemake, slurm_cluster,
                           start_snakemake, stop_process)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
PROFILE = ROOT / "profiles" / "slurm"
SNAKEMAKE_TIMEOUT_S = 150
"""Hard limit of one Snakemake call on the tiny workflow (~30 s through SLURM)."""
PIPELINE_TIMEOUT_S = 540
"""Hard limit of one Snakemake call on the reduced pipeline: five dependent levels of jobs, each a
fresh Python importing torch, ~2 min through SLURM on a quiet 2-core box, 5+ min on a busy one."""
PIPELINE_RUN = "slurmtest"
PIPELINE_TARGETS = [f"results/{PIPELINE_RUN}/sites.parquet",
                    *(f"results/{PIPELINE_RUN}/L3/{name}" for name in ("gold.parquet", "patch.json"))]
PIPELINE_TABLES = [f"results/{PIPELINE_RUN}/{name}" for name in ("sites.parquet", "L3/gold.parquet",
                                                                 "L3/span1/patch/floors.parquet")]
"""The tables compared with a local run (patch.json lists the patch files; the floors' aggregate holds their rows)."""
PIPELINE_ALLOCATIONS = ["conditions", "gold_aggregate", "group:extract-0", "group:patch-0", "patch_aggregate",
                        "patch_floors_aggregate", "sites"]
"""The allocations the targets need: two shards, the floors only (no routes). Both shards' gold extraction is one
allocation (group extract-0) and both shards' patching another (patch-0): profiles/slurm packs 20 and 10 shards."""
MODEL_GROUPS = {"group:extract-0": ["gold", "gold"], "group:patch-0": ["patch_floors", "patch_floors"]}
GPU_RULES = {"gold", "span_gold", "patch_floors", "patch_route", "recon_nla_ar", "explain_nla_av", "recon_text_channel",
             "recon_sae", "recon_span", "whole_context", "train_gold", *MODEL_GROUPS}


TINY_SNAKEFILE = r'''
# Two rules named like the pipeline's: `sites` runs on CPU, `gold` gets gpu=1 from the profile.
rule all:
    input:
        "results/tiny/gold.txt",

rule sites:
    output:
        sites="results/tiny/sites.txt",
    log:
        "logs/tiny/sites.log",
    shell:
        "seq 1 7 > {output.sites}; "
        "echo slurm_job=${{SLURM_JOB_ID:-none}} gpus=${{CUDA_VISIBLE_DEVICES:-none}} > {log}"

rule gold:
    input:
        sites="results/tiny/sites.txt",
    output:
        gold="results/tiny/gold.txt",
    log:
        "logs/tiny/gold.log",
    shell:
        "awk '{{print $1, $1 * $1}}' {input.sites} > {output.gold}; "
        "echo slurm_job=${{SLURM_JOB_ID:-none}} gpus=${{CUDA_VISIBLE_DEVICES:-none}} > {log}"
'''


def accounting_enabled() -> bool:
    return os.environ.get("CAUSAL_KL_SLURM_ACCOUNTING", "1") != "0"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A running cluster for this module; daemons stopped by PID afterwards."""
    try:
        ctx = slurm_cluster(tmp_path_factory.mktemp("slurm"), accounting=accounting_enabled())
        c = ctx.__enter__()
    except HarnessUnavailable as e:
        if os.geteuid() == 0:  # as root (CI) the harness must come up: a skip would hide a broken install
            pytest.fail(str(e))
        pytest.skip(str(e))
    try:
        yield c
    finally:
        ctx.__exit__(None, None, None)


def profile_overrides(cluster: SlurmCluster) -> list[str]:
    """Test-only command-line overrides on top of ``--profile profiles/slurm``.

    The profile's default-resources are kept and only an account is added (a CLI list
    replaces the profile's, so they are restated); with accounting the account is the
    one slurmdbd creates, without it the plugin's squeue mode is switched on.
    """
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    defaults = dict(profile["default-resources"])
    args = ["--slurm-init-seconds-before-status-checks", "3", "--jobs", "4"]
    if cluster.accounting:
        defaults["slurm_account"] = "root"
    else:
        args += ["--slurm-no-account", "--slurm-status-command", "squeue",
                 "--slurm-init-seconds-before-status-checks", "7"]
    args += ["--default-resources", *[f"{k}={v}" for k, v in defaults.items()]]
    return args


def run_env(cluster: SlurmCluster) -> dict[str, str]:
    env = dict(cluster.env)
    env.pop("SLURM_CONF", None)  # what a user has: the config at /etc/slurm/slurm.conf
    return env


def assert_went_through_slurm(cluster: SlurmCluster, jobs: dict[str, str], gpu_rules: set[str],
                              evidence: Path) -> None:
    """Every submitted job finished in SLURM; exactly the GPU rules were allocated a GPU.

    What SLURM said is written to ``evidence`` (kept in pytest's tmp dir for a look).
    """
    assert jobs, "no 'submitted with SLURM jobid' line in Snakemake's log"
    if cluster.accounting:
        rows = {r["JobID"]: r for r in cluster.sacct(list(jobs))}
        evidence.write_text("".join(f"{jobs.get(j, '?')}\t{r}\n" for j, r in sorted(rows.items(), key=lambda x: int(x[0]))))
        assert set(rows) == set(jobs), f"sacct lists {sorted(rows)}, Snakemake submitted {sorted(jobs)}"
        for jid, rule in jobs.items():
            assert rows[jid]["State"] == "COMPLETED", (rule, rows[jid])
            has_gpu = "gres/gpu=1" in rows[jid]["AllocTRES"]
            assert has_gpu == (rule in gpu_rules), (rule, rows[jid]["AllocTRES"])
    else:
        ctl = cluster.controller_log()
        for jid, rule in jobs.items():
            assert f"JobId={jid} " in ctl, f"slurmctld.log never mentions job {jid} ({rule})"
            show = cluster.run(["scontrol", "show", "job", jid]).stdout
            with open(evidence, "a") as fh:
                fh.write(f"{rule}\t{show}\n")
            assert "JobState=COMPLETED" in show, (rule, show)
            has_gpu = "gres/gpu=1" in show or "gres:gpu:1" in show
            assert has_gpu == (rule in gpu_rules), (rule, show)


def make_workflow(dest: Path, snakefile: str) -> Path:
    dest.mkdir(parents=True)
    (dest / "Snakefile").write_text(snakefile)
    return dest


def test_tiny_workflow_runs_through_slurm_and_matches_local(cluster: SlurmCluster, tmp_path: Path) -> None:
    """Two rules through profiles/slurm: SLURM ran both, `gold` got a GPU, outputs equal a local run."""
    local = make_workflow(tmp_path / "local", TINY_SNAKEFILE)
    r_local = run_snakemake(["--cores", "1"], local, timeout_s=60, log_path=tmp_path / "local.log")
    assert r_local.returncode == 0, r_local.log[-3000:]

    wf = make_workflow(tmp_path / "slurm", TINY_SNAKEFILE)
    r = run_snakemake(["--profile", str(PROFILE), *profile_overrides(cluster)], wf,
                      timeout_s=SNAKEMAKE_TIMEOUT_S, env=run_env(cluster), log_path=tmp_path / "slurm.log",
                      steady_status_checks=True)
    assert not r.timed_out, f"snakemake hung and was killed after {r.seconds:.0f}s\n{r.log[-3000:]}\n{cluster.log_tail()}"
    assert r.returncode == 0, f"{r.log[-4000:]}\n{cluster.log_tail()}"

    jobs = r.slurm_jobs()
    assert sorted(jobs.values()) == ["gold", "sites"], jobs
    assert_went_through_slurm(cluster, jobs, gpu_rules={"gold"}, evidence=tmp_path / "slurm_jobs.txt")
    # the jobs ran inside SLURM allocations, and only gold's had a GPU device
    assert "gpus=0" in (wf / "logs/tiny/gold.log").read_text()
    assert "gpus=none" in (wf / "logs/tiny/sites.log").read_text()
    assert "slurm_job=none" not in (wf / "logs/tiny/sites.log").read_text()

    for out in ("results/tiny/sites.txt", "results/tiny/gold.txt"):
        assert (wf / out).read_bytes() == (local / out).read_bytes(), out


@pytest.fixture(scope="module")
def pipeline_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Gemma-3 checkpoint and a 12-document corpus, built once (no demo training)."""
    d = tmp_path_factory.mktemp("pipeline_inputs")
    fixtures.tiny_gemma3_text(d / "model")
    fixtures.write_corpus(d / "corpus.parquet", n_docs=12)
    return d


def make_pipeline(dest: Path, inputs: Path) -> Path:
    """A copy of this checkout's workflow whose config is the demo reduced to two shards.

    The demo's own model would have to be trained first (minutes), so the run points at
    the tests' tiny checkpoint and corpus instead; every rule it runs is the real one.
    """
    copy_workflow(dest)
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config.pop("demo", None)
    config.update(
        run=PIPELINE_RUN,
        corpus={"name": "causal-kl/test-corpus", "path": str(inputs / "corpus.parquet"), "split": "train",
                "column": "content", "rows": [0, 6]},
        model={"path": str(inputs / "model"), "layer": 3},
        sites={"positions_per_doc": 4, "min_position": 50, "max_length": 256, "max_sites": 20, "shard_size": 10},
        gold={"write_demo_base": False},
        patch={"spans": [1]},
        whole_context={"enabled": False},
        routes={},
    )
    (dest / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return dest


def assert_tables_equal(a: Path, b: Path) -> None:
    """Same schema and rows; floats equal to float32 round-off (separate processes, same CPU)."""
    ta, tb = pq.read_table(a), pq.read_table(b)
    assert ta.schema.remove_metadata() == tb.schema.remove_metadata(), a.name
    assert ta.num_rows == tb.num_rows > 0, a.name
    for name in ta.column_names:
        ca, cb = ta[name].combine_chunks(), tb[name].combine_chunks()
        if pa.types.is_list(ca.type) or pa.types.is_fixed_size_list(ca.type):
            ca, cb = ca.flatten(), cb.flatten()
        if pa.types.is_floating(ca.type):
            np.testing.assert_allclose(ca.to_numpy(zero_copy_only=False), cb.to_numpy(zero_copy_only=False),
                                       rtol=1e-5, atol=1e-6, err_msg=f"{a.name}:{name}")
        else:
            assert ca.equals(cb), f"{a.name}:{name}"


def server_events(wf: Path, partial_ok: bool = False) -> list[dict]:
    """The model servers' own records (causal_kl.server: one JSON line per server start, model load and request).
    ``partial_ok``: read while a server may be writing (a last line not yet whole is left out)."""
    path = wf / "logs" / PIPELINE_RUN / "model_server.jsonl"
    lines = [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    if partial_ok and lines and not lines[-1].rstrip().endswith("}"):
        lines = lines[:-1]
    return [json.loads(line) for line in lines]


def assert_one_load_per_allocation(events: list[dict], model_allocations: set[str]) -> dict[str, list[dict]]:
    """Every allocation that ran model jobs loaded the model exactly once, in a server its own Snakemake started;
    its requests ran one after another. Returns the requests per allocation."""
    loads = [e for e in events if e["event"] == "load"]
    assert sorted(e["slurm_job_id"] for e in loads) == sorted(model_allocations), (loads, model_allocations)
    starts = [e for e in events if e["event"] == "start"]
    assert {e["slurm_job_id"] for e in starts} == model_allocations, starts
    assert all(e["origin"] == "allocation" for e in starts), starts  # started by the allocation's Snakemake
    requests: dict[str, list[dict]] = {}
    for e in sorted((e for e in events if e["event"] == "request"), key=lambda e: e["start"]):
        assert e["ok"], e
        requests.setdefault(e["slurm_job_id"], []).append(e)
    for reqs in requests.values():  # one GPU per allocation: never two model jobs at once
        assert all(b["start"] >= a["start"] + a["seconds"] - 1e-3 for a, b in zip(reqs, reqs[1:])), reqs
    return requests


@pytest.fixture(scope="module")
def pipeline_runs(cluster: SlurmCluster, pipeline_inputs: Path, tmp_path_factory: pytest.TempPathFactory):
    """The reduced pipeline run once locally and once through profiles/slurm (shared by the tests below, in order:
    the one-shard rerun, then the killed allocation, each on the SLURM run's workflow as the one before left it)."""
    d = tmp_path_factory.mktemp("pipeline")
    local = make_pipeline(d / "local", pipeline_inputs)
    wf = make_pipeline(d / "slurm", pipeline_inputs)
    # the local reference runs while the SLURM run waits on its status polls
    with ThreadPoolExecutor(max_workers=1) as pool:
        local_run = pool.submit(run_snakemake, ["--cores", "1", *PIPELINE_TARGETS], local,
                                timeout_s=PIPELINE_TIMEOUT_S, log_path=d / "local.log")
        # targets first: --default-resources takes every value after it
        r = run_snakemake([*PIPELINE_TARGETS, "--profile", str(PROFILE), *profile_overrides(cluster)], wf,
                          timeout_s=PIPELINE_TIMEOUT_S, env=run_env(cluster), log_path=d / "slurm.log",
                          steady_status_checks=True)
        r_local = local_run.result()
    return SimpleNamespace(local=local, wf=wf, r=r, r_local=r_local, dir=d)


def test_pipeline_shards_run_through_slurm_and_match_local(cluster: SlurmCluster, pipeline_runs,
                                                           tmp_path: Path) -> None:
    """The real sites -> gold -> patch_floors chain, two shards, through profiles/slurm: the model jobs of the two
    shards run in two allocations (extraction, patching) with one model load each, one GPU each; outputs equal a
    local run. Then one shard's patch file is deleted: only that shard's job reruns, in one allocation."""
    local, wf, r, r_local = pipeline_runs.local, pipeline_runs.wf, pipeline_runs.r, pipeline_runs.r_local
    assert r_local.returncode == 0, r_local.log[-4000:]
    assert not r.timed_out, f"snakemake hung and was killed after {r.seconds:.0f}s\n{r.log[-3000:]}\n{cluster.log_tail()}"
    assert r.returncode == 0, f"{r.log[-5000:]}\n{cluster.log_tail()}"

    jobs = r.slurm_jobs()
    assert sorted(jobs.values()) == PIPELINE_ALLOCATIONS, jobs
    assert_went_through_slurm(cluster, jobs, gpu_rules=GPU_RULES, evidence=tmp_path / "slurm_jobs.txt")
    model_allocations = {j for j, name in jobs.items() if name in MODEL_GROUPS}
    requests = assert_one_load_per_allocation(server_events(wf), model_allocations)
    # each group allocation ran exactly its planned jobs: the two shards' golds, then the two shards' floors
    for jid, name in jobs.items():
        if name in MODEL_GROUPS:
            funcs = sorted(e["func"].rsplit(":", 1)[1] for e in requests[jid])
            assert funcs == MODEL_GROUPS[name], (name, funcs)
    for target in PIPELINE_TABLES:
        assert_tables_equal(wf / target, local / target)

    # one shard's patch file gone: the rerun patches only that shard (one allocation, one load) and re-aggregates
    shard = f"results/{PIPELINE_RUN}/L3/span1/patch/floors/shard_001.parquet"
    (wf / shard).unlink()
    before = len(server_events(wf))
    # (the workflow's default target names every shard file; these explicit targets need the deleted one named too)
    r2 = run_snakemake([*PIPELINE_TARGETS, shard, "--profile", str(PROFILE), *profile_overrides(cluster)], wf,
                       timeout_s=PIPELINE_TIMEOUT_S, env=run_env(cluster), log_path=tmp_path / "slurm_rerun.log",
                       steady_status_checks=True)
    assert not r2.timed_out and r2.returncode == 0, f"{r2.log[-5000:]}\n{cluster.log_tail()}"
    jobs2 = r2.slurm_jobs()
    assert sorted(jobs2.values()) == ["group:patch-0", "patch_aggregate", "patch_floors_aggregate"], jobs2
    assert_went_through_slurm(cluster, jobs2, gpu_rules=GPU_RULES, evidence=tmp_path / "slurm_jobs_rerun.txt")
    new = server_events(wf)[before:]
    patch_alloc = {j for j, name in jobs2.items() if name == "group:patch-0"}
    requests2 = assert_one_load_per_allocation(new, patch_alloc)
    reran = [e for reqs in requests2.values() for e in reqs]
    assert len(reran) == 1 and reran[0]["func"].endswith(":patch_floors"), reran
    assert reran[0]["log"].endswith(f"logs/{PIPELINE_RUN}/L3/span1/patch/floors/shard_001.log"), reran
    for target in PIPELINE_TABLES:
        assert_tables_equal(wf / target, local / target)


FLOORS = [f"results/{PIPELINE_RUN}/L3/span1/patch/floors/shard_{i:03d}.parquet" for i in range(2)]
"""The two shards' patching: deleted, they are one allocation (group patch-0) running two jobs one after another."""
PATCH_ALLOCATION = re.compile(r"submitted with SLURM jobid (\d+) \(log: \S*/group_patch-0_")


def start_and_kill_patching(cluster: SlurmCluster, wf: Path, log: Path, args: list[str], kill_snakemake: bool):
    """Start the run, wait for the patch allocation's first finished model request, and ``scancel`` the allocation
    (with ``kill_snakemake``, SIGKILL the Snakemake that submitted it first, as a lost login session would). Returns
    the running (or killed) Snakemake and the killed allocation's id."""
    before = len(server_events(wf))
    proc = start_snakemake(args, wf, timeout_s=PIPELINE_TIMEOUT_S, env=run_env(cluster), log_path=log,
                           steady_status_checks=True)
    try:
        cluster.wait_until("the patch allocation's submission",
                           lambda: PATCH_ALLOCATION.search(log.read_text()) or proc.poll() is not None, 240)
        m = PATCH_ALLOCATION.search(log.read_text())
        assert m, log.read_text()[-3000:]
        jid = m.group(1)
        cluster.wait_until("the allocation's first request", lambda: proc.poll() is not None or any(
            e["event"] == "request" and e.get("slurm_job_id") == jid for e in server_events(wf, partial_ok=True)[before:]),
            240, interval_s=0.1)
        assert proc.poll() is None, log.read_text()[-3000:]
        if kill_snakemake:  # Snakemake itself (the child of `timeout`), by PID
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            for pid in children:
                os.kill(int(pid), signal.SIGKILL)
        cluster.run(["scancel", jid])
        cluster.wait_until("the allocation's end", lambda: not cluster.run(["squeue", "-h", "-j", jid, "-t", "PD,CF,R,CG,S"], check=False)
                           .stdout.strip(), 120)
    except BaseException:
        stop_process(proc)
        raise
    return proc, jid


def slurm_state(cluster: SlurmCluster, jid: str) -> str:
    if cluster.accounting:
        return cluster.sacct([jid])[0]["State"]
    return re.search(r"JobState=(\S+)", cluster.run(["scontrol", "show", "job", jid]).stdout).group(1)


def assert_whole_and_missing(wf: Path) -> list[str]:
    """Nothing partial after a kill: every visible floors file reads whole (atomic writes). Returns the shards the
    kill left unfinished (one or both: the first shard's request has finished, its file may not be written yet)."""
    for path in (wf / f"results/{PIPELINE_RUN}/L3/span1/patch/floors").glob("shard_*.parquet"):
        assert pq.read_table(path).num_rows > 0, path
    return [s for s in FLOORS if not (wf / s).exists()]


def test_a_cancelled_allocation_fails_and_is_resubmitted(cluster: SlurmCluster, pipeline_runs, tmp_path: Path) -> None:
    """An allocation cancelled mid-group (``scancel`` by a user or an admin) while Snakemake runs on: the SLURM
    plugin sees it failed (sacct writes ``CANCELLED by <uid>``, which causal_kl.cluster.see_cancelled_slurm_jobs makes
    a fail state; unwrapped, Snakemake would wait for it for ever), the profile's ``retries: 1`` submits the group
    again, and the run ends by itself with the local run's outputs; every allocation loaded the model once."""
    local, wf = pipeline_runs.local, pipeline_runs.wf
    if pipeline_runs.r.returncode != 0:
        pytest.skip("needs the SLURM run of the test before")
    for shard in FLOORS:
        (wf / shard).unlink()
    before = len(server_events(wf))
    log = tmp_path / "cancelled.log"
    proc, killed = start_and_kill_patching(cluster, wf, log, [*PIPELINE_TARGETS, *FLOORS, "--profile", str(PROFILE),
                                                              *profile_overrides(cluster)], kill_snakemake=False)
    r = finish_snakemake(proc, PIPELINE_TIMEOUT_S)
    assert not r.timed_out, f"Snakemake still waited for the cancelled allocation after {r.seconds:.0f}s\n{r.log[-3000:]}"
    assert r.returncode == 0, f"{r.log[-5000:]}\n{cluster.log_tail()}"
    assert slurm_state(cluster, killed).startswith("CANCELLED")
    jobs = r.slurm_jobs()
    assert sorted(jobs.values()) == ["group:patch-0", "group:patch-0", "patch_aggregate", "patch_floors_aggregate"], jobs
    retried = {j: name for j, name in jobs.items() if j != killed}
    assert_went_through_slurm(cluster, retried, gpu_rules=GPU_RULES, evidence=tmp_path / "slurm_jobs.txt")
    events = server_events(wf)[before:]
    # the retry: one load, its requests whole and one after another, the shards the kill left (at least the one
    # the killed allocation had not reached)
    retry = next(j for j, name in retried.items() if name == "group:patch-0")
    requests = assert_one_load_per_allocation([e for e in events if e.get("slurm_job_id") == retry], {retry})
    redone = {e["log"].rsplit(f"logs/{PIPELINE_RUN}/", 1)[1] for e in requests[retry]}
    assert "L3/span1/patch/floors/shard_001.log" in redone, redone
    assert [e["slurm_job_id"] for e in events if e["event"] == "load"].count(killed) == 1
    for target in PIPELINE_TABLES:
        assert_tables_equal(wf / target, local / target)


def test_a_killed_run_recovers_with_unlock_and_rerun_incomplete(cluster: SlurmCluster, pipeline_runs,
                                                                tmp_path: Path) -> None:
    """Snakemake itself killed (SIGKILL) and its allocation cancelled mid-group: nothing partial is visible, and the
    README's recovery (``--unlock``, then the same command; the profile sets ``--rerun-incomplete``) runs exactly the
    shards the kill left unfinished, in one allocation with one load, to the local run's outputs."""
    local, wf = pipeline_runs.local, pipeline_runs.wf
    if pipeline_runs.r.returncode != 0:
        pytest.skip("needs the SLURM run of the test before")
    for shard in FLOORS:
        (wf / shard).unlink()
    args = [*PIPELINE_TARGETS, *FLOORS, "--profile", str(PROFILE), *profile_overrides(cluster)]
    proc, killed = start_and_kill_patching(cluster, wf, tmp_path / "killed.log", args, kill_snakemake=True)
    finish_snakemake(proc, 60)
    assert slurm_state(cluster, killed).startswith("CANCELLED")
    missing = assert_whole_and_missing(wf)
    assert missing, "the kill came after both shards finished: nothing to recover"
    assert any((wf / ".snakemake" / "locks").iterdir()), "a killed Snakemake leaves its lock"

    u = run_snakemake([*args, "--unlock"], wf, timeout_s=120, env=run_env(cluster), log_path=tmp_path / "unlock.log")
    assert u.returncode == 0, u.log[-3000:]
    after_kill = len(server_events(wf))
    r = run_snakemake(args, wf, timeout_s=PIPELINE_TIMEOUT_S, env=run_env(cluster), log_path=tmp_path / "recovered.log",
                      steady_status_checks=True)
    assert not r.timed_out and r.returncode == 0, f"{r.log[-5000:]}\n{cluster.log_tail()}"
    jobs = r.slurm_jobs()
    assert sorted(jobs.values()) == ["group:patch-0", "patch_aggregate", "patch_floors_aggregate"], jobs
    assert_went_through_slurm(cluster, jobs, gpu_rules=GPU_RULES, evidence=tmp_path / "slurm_jobs_recovered.txt")
    requests = assert_one_load_per_allocation(server_events(wf)[after_kill:],
                                              {j for j, name in jobs.items() if name == "group:patch-0"})
    logs = sorted(e["log"].rsplit(f"logs/{PIPELINE_RUN}/", 1)[1] for reqs in requests.values() for e in reqs)
    assert logs == sorted(s.replace(f"results/{PIPELINE_RUN}/", "").replace(".parquet", ".log") for s in missing), logs
    for target in PIPELINE_TABLES:
        assert_tables_equal(wf / target, local / target)
