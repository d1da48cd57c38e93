"""Cluster packing (causal_kl/cluster.py): which model jobs share an allocation, as Snakemake plans it.

The dry runs here use profiles/slurm as users do (no cluster needed: a dry run submits nothing) on the tests' tiny
model, with the `sites` checkpoint's outputs present, and read Snakemake's own plan: its group jobs. The packing is
checked against an independent count of the jobs per block of shards; the real-SLURM proof (one load per allocation,
the one-shard rerun) is tests/test_slurm.py.
"""

from __future__ import annotations

import importlib.metadata
from collections import Counter
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from causal_kl.checks import requested_groups, setting_source, submits_to_cluster
from causal_kl.cluster import (DEFAULT_SHARDS, GROUPED_RULES, RULE_MODELS, base_slurm_state, check_each_group_once,
                               check_groups, runs_model_jobs, see_cancelled_slurm_jobs, shard_group_id,
                               shards_per_allocation)
from causal_kl.errors import CausalKLError
from workflow_helpers import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_scale  # noqa: E402  (the benchmark's dry-run readers: one reading of Snakemake's output)
import same_plan  # noqa: E402  (issue #30's plan comparison: its reading of a dry run, checked on the one here)


# ------------------------------------------------------------------ settings and checks, no Snakemake
def test_shards_per_allocation_defaults_strings_and_bad_values():
    assert shards_per_allocation({}, "c.yaml") == DEFAULT_SHARDS
    # a profile's config: gives strings (Snakemake reads --config values with YAML's BaseLoader)
    assert shards_per_allocation({"cluster": {"shards_per_allocation": {"patch": "3"}}}, "c.yaml") == \
        {**DEFAULT_SHARDS, "patch": 3}
    for bad in (0, -2, "0", "x", "2.5", 1.5, True):
        with pytest.raises(CausalKLError) as e:
            shards_per_allocation({"cluster": {"shards_per_allocation": {"extract": bad}}}, "c.yaml")
        msg = str(e.value)
        assert "\n" not in msg and "cluster.shards_per_allocation.extract" in msg and "Fix:" in msg, msg


def test_block_ids_follow_the_shard_index():
    shards = {"extract": 20, "patch": 3}
    ids = [shard_group_id("patch", f"{i:03d}", shards) for i in range(7)]
    assert ids == ["patch-0"] * 3 + ["patch-1"] * 3 + ["patch-2"]
    assert shard_group_id("extract", "1234", shards) == "extract-61"  # 4-digit shards too


def test_every_group_holds_one_model():
    check_groups({})  # the workflow's own groups
    for group in set(GROUPED_RULES.values()):
        models = {RULE_MODELS[r] for r, g in GROUPED_RULES.items() if g == group} - {None}
        assert len(models) <= 1, (group, models)
    check_groups({"gold": "extract", "recon_sae": "patch"})  # an SAE loads no language model: allowed
    for bad in ({"recon_nla_ar": "patch"}, {"explain_nla_av": "x", "recon_nla_ar": "x"}):
        with pytest.raises(CausalKLError) as e:
            check_groups(bad)
        msg = str(e.value)
        assert "\n" not in msg and "one model server" in msg and "Fix:" in msg, msg


# ------------------------------------------------------------------ Snakemake's group check, each group once
class _Job:
    def __init__(self, name):
        self.rule = SimpleNamespace(name=name, lineno=None, snakefile=None)


class _Group:
    def __init__(self, groupid, jobs):
        self.groupid, self.jobs = groupid, set(jobs)

    def __contains__(self, job):
        return job in self.jobs

    def __iter__(self):
        return iter(self.jobs)


class _CountingDeps(dict):
    """A job -> dependencies map that counts its lookups: each is one step of an ancestor walk."""
    lookups = 0

    def __getitem__(self, job):
        type(self).lookups += 1
        return super().__getitem__(job)


def _snakemake_check():
    """Snakemake's own ``DAG._check_groups``, unwrapped (a Snakefile parsed in this process may have wrapped it)."""
    import snakemake.api  # noqa: F401  (snakemake.dag, imported first, is a circular import)
    from snakemake.dag import DAG

    return getattr(DAG._check_groups, "__wrapped__", DAG._check_groups)


def _dags():
    """Two stand-ins for Snakemake's DAG running its own check: as installed, and checking each group once."""
    plain = type("Plain", (), {"_check_groups": _snakemake_check()})
    once = type("Once", (), {"_check_groups": _snakemake_check()})
    assert check_each_group_once(once), "the installed Snakemake's _check_groups no longer has the expected loop"
    return plain, once


def _dag(cls, deps, groups):
    dag = cls()
    dag._dependencies = _CountingDeps(deps)
    dag._group = {job: group for group in groups for job in group}
    return dag


def test_each_group_is_checked_once_with_the_same_verdict():
    from snakemake.exceptions import WorkflowError

    plain, once = _dags()
    # a block of n independent jobs, each depending on one job outside the group (its gold): Snakemake's loop checks
    # the group once per member, each check walking every member and its dependency: 2n lookups a check
    n = 30
    for cls, walks in ((plain, n), (once, 1)):
        gold = _Job("conditions")
        members = [_Job("patch_route") for _ in range(n)]
        deps = {gold: [], **{m: [gold] for m in members}}
        dag = _dag(cls, deps, [_Group("patch-0", members)])
        before = dict(dag._group)
        _CountingDeps.lookups = 0
        dag._check_groups()
        assert _CountingDeps.lookups == walks * 2 * n
        assert dag._group == before, "the full job -> group map is back after the check"
    # a path that leaves the group and enters it again (a -> b -> c, a and c grouped): both refuse it, both put the map back
    for cls in (plain, once):
        a, b, c = _Job("a"), _Job("b"), _Job("c")
        dag = _dag(cls, {a: [], b: [a], c: [b]}, [_Group("g", [a, c])])
        before = dict(dag._group)
        with pytest.raises(WorkflowError, match="depends on itself"):
            dag._check_groups()
        assert dag._group == before


def test_the_group_check_is_left_alone_where_it_differs():
    def _check_groups(self):
        for job, group in self._group.items():  # a loop that needs each job: not the one the wrapper narrows
            pass

    other = type("Other", (), {"_check_groups": _check_groups})
    assert not check_each_group_once(other)
    assert other._check_groups is _check_groups


def _plugin_states(monkeypatch, states: str, wrapped: bool, status_command: str = "sacct"):
    """The SLURM plugin's own ``check_active_jobs`` on one status query that prints ``states`` (sacct's
    ``JobIdRaw|State`` lines, or squeue's ``%i|%T`` with ``status_command="squeue"``): which jobs it reports failed,
    finished, and still running."""
    import asyncio
    import contextlib
    import logging

    plugin = pytest.importorskip("snakemake_executor_plugin_slurm")
    original = getattr(plugin.query_job_status, "__wrapped__", plugin.query_job_status)
    monkeypatch.setattr(plugin, "query_job_status", original)
    if wrapped:
        assert see_cancelled_slurm_jobs(plugin), "the installed plugin no longer calls query_job_status"
    monkeypatch.setattr(plugin, f"query_job_status_{status_command}", lambda run_uuid: f"printf {shlex.quote(states)}")
    monkeypatch.setattr(plugin, "is_query_tool_available", lambda tool: True)
    monkeypatch.setattr(plugin, "get_min_job_age", lambda: 300)
    # the plugin asks sacct for a failed job's step reasons: none here
    monkeypatch.setattr(plugin, "subprocess", SimpleNamespace(check_output=lambda *a, **k: "", PIPE=subprocess.PIPE,
                                                              CalledProcessError=subprocess.CalledProcessError))
    seen = {"error": [], "success": []}
    ex = object.__new__(plugin.Executor)
    settings = SimpleNamespace(init_seconds_before_status_checks=1, status_attempts=1, status_command=status_command,
                               keep_successful_logs=True, requeue=False)
    vars(ex).update(workflow=SimpleNamespace(executor_settings=settings), run_uuid="run",
                    logger=logging.getLogger("slurm-plugin-test"), status_rate_limiter=contextlib.AsyncExitStack(),
                    _next_seconds_between_status_checks=1, _preemption_warning=False, _failed_nodes=set(),
                    _status_query_calls=0, _status_query_failures=0, _status_query_total_seconds=0.0,
                    _status_query_min_seconds=None, _status_query_max_seconds=0.0, _status_query_cycle_rows=[],
                    report_job_error=lambda j, **kw: seen["error"].append(j.external_jobid),
                    report_job_success=lambda j: seen["success"].append(j.external_jobid))
    jobs = [SimpleNamespace(external_jobid=i, aux={"slurm_logfile": None}) for i in ("13", "14", "15")]

    async def check():
        return [j.external_jobid async for j in ex.check_active_jobs(jobs)]

    seen["running"] = asyncio.run(check())
    return seen


def test_a_cancelled_allocation_fails_instead_of_running_for_ever(monkeypatch):
    # what sacct -X --parsable2 --format=JobIdRaw,State prints after `scancel 13`: 14 finished, 15 still runs
    states = r"13|CANCELLED by 0\n14|COMPLETED\n15|RUNNING\n"
    as_installed = _plugin_states(monkeypatch, states, wrapped=False)
    assert as_installed == {"error": [], "success": ["14"], "running": ["13", "15"]}, "the plugin fixed it: drop the wrapper"
    assert _plugin_states(monkeypatch, states, wrapped=True) == {"error": ["13"], "success": ["14"], "running": ["15"]}


def test_the_plugins_squeue_setting_is_no_fix_for_a_cancelled_allocation(monkeypatch):
    """The plugin's one status setting (``slurm-status-command: squeue``, tried before the wrapper): squeue prints a
    cancelled job as ``CANCELLED``, so the plugin fails it, but only while squeue still lists it (``MinJobAge`` after
    it ends); a job it no longer lists reads as queued, for ever, as before. Hence the wrapper (sacct, the default)."""
    listed = _plugin_states(monkeypatch, r"13|CANCELLED\n14|COMPLETED\n15|RUNNING\n", False, "squeue")
    assert listed == {"error": ["13"], "success": ["14"], "running": ["15"]}
    aged_out = _plugin_states(monkeypatch, r"14|COMPLETED\n15|RUNNING\n", False, "squeue")  # 13 ended > MinJobAge ago
    assert aged_out == {"error": [], "success": ["14"], "running": ["13", "15"]}


def test_slurm_states_lose_only_their_annotation():
    assert [base_slurm_state(s) for s in ("CANCELLED by 1234", "COMPLETED", "RUNNING", "OUT_OF_MEMORY", "")] == [
        "CANCELLED", "COMPLETED", "RUNNING", "OUT_OF_MEMORY", ""]


def test_the_status_query_is_left_alone_where_it_differs(monkeypatch):
    async def query_job_status(command, logger):
        return {}, 0.0

    class Executor:
        async def check_active_jobs(self, active_jobs):  # reads states some other way
            yield None

    other = SimpleNamespace(query_job_status=query_job_status, Executor=Executor)
    assert not see_cancelled_slurm_jobs(other)
    assert other.query_job_status is query_job_status
    monkeypatch.setitem(sys.modules, "snakemake_executor_plugin_slurm", None)  # a local install: no plugin
    assert not see_cancelled_slurm_jobs()


def test_groups_and_allowed_rules_read_from_the_command_line_and_profile(tmp_path):
    prof = tmp_path / "prof"
    prof.mkdir()
    (prof / "config.yaml").write_text(yaml.safe_dump({"groups": ["recon_nla_ar=patch"]}))
    assert requested_groups(["--profile", str(prof)]) == {"recon_nla_ar": "patch"}
    assert requested_groups(["--groups", "gold=a", "patch_route=b", "--profile", str(prof)]) == \
        {"gold": "a", "patch_route": "b"}
    assert runs_model_jobs(["--allowed-rules", "gold_aggregate conditions", "--cores", "1"]) is False
    assert runs_model_jobs(["--allowed-rules", "gold", "span_gold", "--cores", "1"]) is True
    assert runs_model_jobs(["--cores", "1"]) is True
    # groups only where a cluster executor submits (a profile's or -e), never for a local run or dry run
    (prof / "config.yaml").write_text(yaml.safe_dump({"executor": "slurm"}))
    assert submits_to_cluster(["--profile", str(prof), "-n"]) and submits_to_cluster(["-e", "slurm"])
    assert not submits_to_cluster(["--cores", "2"]) and not submits_to_cluster(["-n", "-e", "local"])
    assert not submits_to_cluster(["-e", "slurm-jobstep"])


def test_a_bad_block_size_names_where_it_was_given(tmp_path, monkeypatch):
    """--config on the command line, the profile's config: (which a command-line --config replaces whole, as
    Snakemake's own parser shows), or the config file."""
    from snakemake.cli import parse_args

    monkeypatch.chdir(tmp_path)  # no workflow profile here
    prof = tmp_path / "prof"
    prof.mkdir()
    (prof / "config.yaml").write_text(yaml.safe_dump({"executor": "slurm", "config": {"cluster": {
        "shards_per_allocation": {"patch": 0}}}}))
    key = "cluster.shards_per_allocation.patch"
    cases = [(["-n", "--config", "cluster={shards_per_allocation: {patch: 0}}"], "--config"),
             (["-n", "--profile", str(prof), "--config", "cluster={shards_per_allocation: {patch: x}}"], "--config"),
             (["-n", "--profile", str(prof)], f"--profile {prof} (its config:)"),
             (["-n", "--profile", str(prof), "--config", "seed=7"], "run.yaml"),
             (["-n", "--configfile", "run.yaml"], "run.yaml")]
    for argv, where in cases:
        assert setting_source(argv, key, "run.yaml") == where, argv
    assert parse_args(["-n", "--profile", str(prof), "--config", "seed=7"])[1].config == ["seed=7"]
    with pytest.raises(CausalKLError) as e:
        shards_per_allocation({"cluster": {"shards_per_allocation": {"patch": "x"}}},
                              lambda k: setting_source(cases[1][0], k, "run.yaml"))
    assert str(e.value).startswith("--config: cluster.shards_per_allocation.patch: 'x' is not a number of shards")


NO_SLURM_PLUGIN = """
import pkgutil, sys
found = pkgutil.iter_modules  # Snakemake finds executor plugins by module name: hide the SLURM one, as if not installed
pkgutil.iter_modules = lambda *a, **k: (m for m in found(*a, **k) if not m.name.startswith("snakemake_executor_plugin_slurm"))
from snakemake.cli import main
sys.argv = ["snakemake", *sys.argv[1:]]
main()
"""


def test_the_slurm_profile_without_the_plugin_is_one_line():
    """Snakemake's argparse refuses `executor: slurm` (its whole usage, "invalid choice: 'slurm'") before the workflow
    is read; the profile itself is read first (a YTE definition): one line naming the extra to install."""
    res = subprocess.run([sys.executable, "-c", NO_SLURM_PLUGIN, "-n", "--profile", "profiles/slurm"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    out = res.stdout + res.stderr
    lines = [l for l in out.splitlines() if l.startswith("causal-kl:")]
    assert res.returncode == 1 and len(lines) == 1, out[-2000:]
    assert "executor: slurm" in lines[0] and "Fix: pip install '.[slurm]'" in lines[0] and "usage:" not in out


# ------------------------------------------------------------------ Snakemake's plan under profiles/slurm
@pytest.fixture(scope="module")
def study(tmp_path_factory, gemma3_dir):
    """A 5-shard, 2-layer, 2-span, 2-route study (pca + sae) with its sites in place."""
    work = tmp_path_factory.mktemp("cluster")
    config = bench_scale.study_config(work, sites=50, shard_size=10, layers=[1, 3], spans=[1, 4], n_routes=3)
    config["routes"].pop("text_channel")
    config["model"]["path"] = str(gemma3_dir)
    import fixtures

    fixtures.write_corpus(work / "corpus.parquet", n_docs=config["corpus"]["rows"][1] + 8)
    sae = next(r for r in config["routes"].values() if r["kind"] == "sae")
    for layer in (1, 3):
        bench_scale.write_sae(Path(sae["path"].format(layer=layer)), layer, 64, 128, 8, layer)
    return work, config


def dry_run(work: Path, config: dict, *args: str) -> str:
    wf = work / "wf"
    if not wf.exists():
        bench_scale.copy_workflow(wf)
    (wf / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    bench_scale.fake_sites(wf, config)
    res = subprocess.run([sys.executable, "-m", "snakemake", "-n", *args], cwd=wf, capture_output=True, text=True,
                         timeout=600, env=bench_scale.snakemake_env(work))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout + res.stderr


def test_slurm_profile_packs_each_block_of_shards_into_one_allocation(study):
    work, config = study
    out = dry_run(work, config, "--profile", "profiles/slurm")
    counts = bench_scale.job_counts(out)
    groups = bench_scale.group_jobs(out)
    layers, spans, routes, n_shards = [1, 3], [1, 4], 2, 5
    # independent count of the jobs of a block: per shard, per layer: a gold per span; a patch per span and route+floors
    per_shard = {"extract": len(layers) * len(spans), "patch": len(layers) * len(spans) * (1 + routes)}
    shards = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())["config"]["cluster"]["shards_per_allocation"]
    expect = {}
    for name in ("extract", "patch"):
        k = int(shards[name])
        for b in range(-(-n_shards // k)):
            expect[f"{name}-{b}"] = per_shard[name] * len(range(b * k, min((b + 1) * k, n_shards)))
    expect.update({f"routes-L{l}": sum(counts[r] for r in ("recon_sae", "recon_span", "whole_context")) // len(layers)
                   for l in layers})
    expect["train"] = counts["train_gold"]
    assert groups == expect, (groups, expect)
    model_jobs = sum(v for r, v in counts.items() if r in GROUPED_RULES)
    assert sum(groups.values()) == model_jobs  # every model job is in a group
    local = dry_run(work, config)  # the same plan locally: the same jobs, no groups (Snakemake would ignore them)
    assert bench_scale.job_counts(local) == counts and not bench_scale.group_jobs(local)
    # benchmarks/same_plan.py reads the same jobs and groups as Snakemake's job stats; it tells the two plans apart
    # by their groups alone
    jobs, local_jobs = same_plan.parse_plan(out), same_plan.parse_plan(local)
    assert Counter(j["rule"] for j in jobs) == {r: n for r, n in counts.items() if r != "total"}
    assert Counter(j["group"] for j in jobs if j["group"]) == groups
    assert all(j["output"] for j in jobs if j["rule"] != "all") and not any(j["group"] for j in local_jobs)
    assert len(same_plan.compare(jobs, local_jobs)) == 2 * sum(groups.values())
    assert same_plan.compare([{**j, "group": None} for j in jobs], local_jobs) == []


def test_a_smaller_block_size_from_the_command_line_splits_the_shards(study):
    work, config = study
    out = dry_run(work, config, "--profile", "profiles/slurm", "--config", "cluster={shards_per_allocation: {patch: 2}}")
    groups = bench_scale.group_jobs(out)
    assert sorted(g for g in groups if g.startswith("patch-")) == ["patch-0", "patch-1", "patch-2"]
    assert [groups[f"patch-{b}"] for b in range(3)] == [2 * 12, 2 * 12, 1 * 12]


def test_a_bad_group_setting_is_one_line_before_any_job(study):
    work, config = study
    wf = work / "wf"
    for args, field in ((["--config", "cluster={shards_per_allocation: {patch: 0}}"],
                         "--config: cluster.shards_per_allocation.patch"),
                        (["--groups", "recon_nla_ar=patch"], "recon_nla_ar=patch")):
        res = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--profile", "profiles/slurm", *args], cwd=wf,
                             capture_output=True, text=True, timeout=600, env=bench_scale.snakemake_env(work))
        assert res.returncode != 0
        lines = [l for l in (res.stdout + res.stderr).splitlines() if l.startswith("causal-kl:")]
        assert len(lines) == 1 and field in lines[0] and "Fix:" in lines[0], res.stdout[-2000:] + res.stderr[-2000:]


def test_more_than_1000_shards_plan(study, tmp_path):
    """Shard names grow past three digits (shard_1000, shard_1001): every shard plans, locally and on a cluster."""
    work, _ = study
    config = bench_scale.study_config(work, sites=1002, shard_size=1, layers=[2], spans=[1], n_routes=0,
                                      whole_context=False)
    config["corpus"]["path"] = str(work / "corpus.parquet")
    config["model"]["path"] = study[1]["model"]["path"]
    config["corpus"]["rows"] = [0, 4]  # the sites are made by hand; the corpus only has to hold the rows
    out = dry_run(work, config, "--profile", "profiles/slurm")
    counts = bench_scale.job_counts(out)
    assert counts["gold"] == counts["patch_floors"] == 1002, counts
    assert "results/scale/L2/gold/shard_1001.parquet" in out and "results/scale/L2/span1/patch/floors/shard_1000.parquet" in out
    groups = bench_scale.group_jobs(out)
    k = {"extract": 20, "patch": 10}
    assert {g: n for g, n in groups.items() if g.startswith("extract-")} == \
        {f"extract-{b}": min(k["extract"], 1002 - b * k["extract"]) for b in range(-(-1002 // k["extract"]))}
    assert len([g for g in groups if g.startswith("patch-")]) == -(-1002 // k["patch"])


def test_a_shim_that_does_not_fit_says_so_with_the_version_and_the_cost(monkeypatch):
    """Where the installed Snakemake or plugin is not the source a wrapper was written for, the run's log gets one
    line each (version seen, what is lost); where both fit, none."""
    from causal_kl.cluster import apply_cluster_shims

    class OtherDAG:  # a Snakemake whose group check reads its groups some other way
        def _check_groups(self):
            return [g for g in getattr(self, "groups", ())]

    async def query_job_status(command, logger):
        return {}, 0.0

    class Executor:
        async def check_active_jobs(self, active_jobs):
            yield None

    other_plugin = SimpleNamespace(query_job_status=query_job_status, Executor=Executor)
    warnings = apply_cluster_shims(OtherDAG, other_plugin)
    assert len(warnings) == 2 and all("\n" not in w for w in warnings)
    snakemake_version = importlib.metadata.version("snakemake")
    assert f"Snakemake {snakemake_version}" in warnings[0] and "once per member" in warnings[0]
    assert "snakemake-executor-plugin-slurm" in warnings[1] and "for ever" in warnings[1]
    # the installed versions are the tested ones: both wrappers fit, nothing is said (each put back afterwards)
    plugin = pytest.importorskip("snakemake_executor_plugin_slurm")
    import snakemake.api  # noqa: F401  (snakemake.dag, imported first, is a circular import)
    from snakemake.dag import DAG

    monkeypatch.setattr(plugin, "query_job_status", plugin.query_job_status)
    monkeypatch.setattr(DAG, "_check_groups", DAG._check_groups)
    assert apply_cluster_shims() == []


def test_model_groups_are_declared_from_the_table_and_only_on_a_cluster():
    """The Snakefile's declare_model_groups gives each grouped model rule its group id (checked here by hand for a
    shard of the 2nd extraction block and the 3rd patch block, a point inside a block, the run) and no other rule one;
    each id is registered whole in Snakemake's group components. Locally nothing is set."""
    from causal_kl.workflow_setup import declare_model_groups

    rules = {name: SimpleNamespace(group=None) for name in (*RULE_MODELS, "conditions")}
    workflow = SimpleNamespace(get_rule=rules.__getitem__, group_settings=SimpleNamespace(group_components=()))
    declare_model_groups(workflow, False, {"extract": 20, "patch": 10})
    assert all(rule.group is None for rule in rules.values())
    declare_model_groups(workflow, True, {"extract": 20, "patch": 10})
    w = SimpleNamespace(shard="023", layer="3.mlp_out")
    ids = {name: rule.group(w) for name, rule in rules.items() if rule.group is not None}
    assert ids == {"gold": "extract-1", "span_gold": "extract-1", "patch_floors": "patch-2", "patch_route": "patch-2",
                   "recon_text_channel": "routes-L3.mlp_out", "recon_sae": "routes-L3.mlp_out",
                   "recon_span": "routes-L3.mlp_out", "whole_context": "routes-L3.mlp_out", "train_gold": "train"}
    assert workflow.group_settings.group_components == {g: 1_000_000_000 for g in set(ids.values())}


def test_a_parse_time_error_is_one_line_and_exit_1():
    from causal_kl.workflow_setup import exits_on_config_error, sort_config_keys

    @exits_on_config_error
    def check():
        raise CausalKLError("run.yaml", "model.layer", "99 is past the last block", "give a layer below 4")

    with pytest.raises(SystemExit) as e:
        check()
    assert e.value.code == "causal-kl: run.yaml: model.layer: 99 is past the last block. Fix: give a layer below 4"
    config = {"b": {"y": 1, "x": [{"d": 1, "c": 2}]}, "a": 0}
    same = config
    sort_config_keys(config)
    assert config is same and list(config) == ["a", "b"] and list(config["b"]) == ["x", "y"]
    assert list(config["b"]["x"][0]) == ["c", "d"] and config == {"a": 0, "b": {"x": [{"c": 2, "d": 1}], "y": 1}}
