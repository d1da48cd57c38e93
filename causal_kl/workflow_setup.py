"""What the workflow does when Snakemake parses it: one named function per step, each called once.

``rules/common.smk`` and the ``Snakefile`` declare (paths, input functions, rules); every step that acts (exits on a
bad config, rewrites the config, sets Snakemake's resources, wraps Snakemake or plugin internals, starts a server) is
one of these functions, called once, in this order:

1. ``check_run_config``: which config the run uses, checked (one line and exit 1 on an error);
   then ``common.smk`` has Snakemake ``validate`` it against the schema (which fills in the defaults);
2. ``sort_config_keys``: every dict of the config in sorted key order;
3. ``limit_model_jobs_to_gpus``: a local run's ``gpu`` resource, one model job per GPU;
4. ``groups_model_jobs`` and ``cluster_blocks``: whether the model rules are grouped (a cluster), and the blocks of
   shards that share an allocation (one line and exit 1 on a bad setting);
5. ``wrap_cluster_internals``: the two cluster shims (``causal_kl.cluster``), a warning in the log for each that does
   not fit the installed version;
6. ``keep_model_servers`` and ``start_allocation_servers``: how long this invocation's model servers outlive it, and
   a SLURM allocation's own servers;
7. ``rebuild_missing_results``: the repair wrapper (``causal_kl.repair``), a warning where it does not fit;
8. ``declare_model_groups`` (from the ``Snakefile``, once every rule is defined): each model rule's cluster group,
   from ``causal_kl.model_rules.MODEL_RULES``;
9. ``preload_run_model``, ``plan_work_ahead`` and ``start_analysis_server`` (``onstart``); ``stop_model_servers``,
   ``remove_work_ahead_plan`` and ``stop_analysis_server`` (``onsuccess``/``onerror``).

Each takes what it needs (Snakemake's ``workflow`` object, the config, the command line) as arguments, so that it can
be called, and tested, without a Snakefile.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from causal_kl.errors import CausalKLError
from causal_kl.paths import run_log


def exits_on_config_error(func: Callable[..., Any]) -> Callable[..., Any]:
    """At parse time a ``CausalKLError`` is the run's one line (``causal-kl: file: field: problem. Fix: ...``) and exit
    status 1, before Snakemake prints anything of its own."""

    @functools.wraps(func)
    def checked(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except CausalKLError as err:
            sys.exit(f"causal-kl: {err}")

    return checked


@exits_on_config_error
def check_run_config(workflow, config: dict, argv: list[str]) -> str:
    """Resolve and check the run's config; returns where it was given (the file errors name later).

    The run's config is the ``--configfile`` file(s) alone, else ``config/config.yaml`` (the demo), ``--config`` on
    top (``config.resolve_config``). Then one-line, file/key/fix errors come before Snakemake's own (longer) schema
    report, and every check the config and the files it names allow (model config.json, layers, device, corpus, route
    files, SAEs); an sae route's hooks (where its SAE's files say it splices) are written into the config; targets
    naming a layer, span, route or shard the run does not have are refused.
    """
    from causal_kl.checks import check_run, check_shard_targets, check_targets, runs_jobs_here
    from causal_kl.config import (DEFAULT_CONFIG, gold_points, resolve_config, routes_at, run_spans, set_route_hooks,
                                  validate_config)

    source = resolve_config(config, workflow.configfiles, workflow.config_settings.config,
                            os.path.relpath(Path(workflow.basedir) / DEFAULT_CONFIG))
    validate_config(config, source=source)
    from causal_kl.paths import RUN_DIR, fill

    set_route_hooks(config, check_run(config, source, local_exec=runs_jobs_here(argv))["route_hooks"])
    results = fill(RUN_DIR, run=config["run"])  # the run's folder, from the registry
    check_targets(
        argv,
        results,
        {p.name: routes_at(config, p) for p in gold_points(config)},  # a transcoder's input point has golds only
        run_spans(config),
    )
    check_shard_targets(argv, results)  # a shard before the sites: what to build first
    return source


def sort_config_keys(config: dict) -> None:
    """Every dict of the config in sorted key order, in place, so that no param reads as changed because a file, an
    entry point or a copy of the run gave the same keys in another order (Snakemake compares each param's repr)."""
    from causal_kl.config import canonical

    sorted_config = canonical(config)
    config.clear()
    config.update(sorted_config)


def limit_model_jobs_to_gpus(workflow, argv: list[str]) -> None:
    """One model job per GPU at a time where jobs run here (each also takes one GPU slot, ``causal_kl.gpu``).

    ``snakemake --cores N`` on a GPU box is then safe as written: model jobs run in priority order (shard by shard:
    the model server's clean-pass cache then serves every route of a shard) while CPU jobs fill the other cores.
    ``--resources gpu=N`` chooses; a dry run or a cluster submission is not limited.
    """
    from causal_kl.checks import runs_jobs_here

    if runs_jobs_here(argv) and "gpu" not in workflow.global_resources:
        from causal_kl.gpu import visible_gpus

        workflow.global_resources["gpu"] = max(1, len(visible_gpus()))


def groups_model_jobs(workflow, argv: list[str]) -> bool:
    """Whether the model rules are grouped: under a cluster executor, and in an allocation's own Snakemake. A local run
    (or dry run) has none, as Snakemake would ignore them there, and so skips its group checks."""
    from causal_kl.checks import submits_to_cluster

    return bool(workflow.remote_exec or submits_to_cluster(argv))


@exits_on_config_error
def cluster_blocks(config: Mapping, argv: list[str], config_source: str) -> dict[str, int]:
    """Shards per allocation of each shard group (``cluster.shards_per_allocation``, as ``profiles/slurm`` sets it),
    after refusing a ``--groups`` setting that would put two models behind one server (``cluster.check_groups``)."""
    from causal_kl.checks import requested_groups, setting_source
    from causal_kl.cluster import check_groups, shards_per_allocation

    shards = shards_per_allocation(config, lambda key: setting_source(argv, key, config_source))
    check_groups(requested_groups(argv))
    return shards


def wrap_cluster_internals(cluster_groups: bool) -> None:
    """Under a cluster: Snakemake checks each group once instead of once per member (its check is quadratic in a
    block's jobs), and the SLURM plugin sees a ``scancel``'d allocation as failed instead of running
    (``cluster.apply_cluster_shims``). Each wrapper that does not fit the installed source says so in the log, with the
    version seen and what the run loses."""
    if not cluster_groups:
        return
    from snakemake.logging import logger

    from causal_kl.cluster import apply_cluster_shims

    for warning in apply_cluster_shims():
        logger.warning(warning)


def keep_model_servers(config: Mapping) -> None:
    """``model_server: {keep_s: N}``: the servers this invocation starts or adopts outlive it N s, idle, for the run's
    next invocation (jobs and the onstart preload inherit it; ``causal_kl.client.keep_s`` is 0 inside a SLURM
    allocation)."""
    from causal_kl.config import model_server_keep_s
    from causal_kl.protocol import KEEP_ENV

    os.environ[KEEP_ENV] = repr(model_server_keep_s(config))


def start_allocation_servers(workflow, config: Mapping, argv: list[str]) -> None:
    """In a cluster allocation's own Snakemake (SLURM's batch step) that runs model jobs: start the model server(s)
    here, so that they outlive each job step and every model job of the allocation shares one load
    (``causal_kl.client.prestart_servers``). Nothing anywhere else."""
    from causal_kl.cluster import runs_model_jobs

    if workflow.remote_exec and config.get("model_server", True) and runs_model_jobs(argv):
        from causal_kl.client import prestart_servers

        prestart_servers(config["device"], run_log(config["run"], "model_server"))


def rebuild_missing_results(workflow, results: str) -> None:
    """Where this Snakemake plans (not in a cluster job's own): a missing file of ``results`` between others is remade
    with what was built on it (``causal_kl.repair.rebuild_missing_inputs``). Without it, a failed aggregate's deleted
    output reads as an intermediate file: "Nothing to be done" above it; a Snakemake it does not fit is said so."""
    from causal_kl.repair import rebuild_missing_inputs

    if workflow.remote_exec:
        return
    if not rebuild_missing_inputs(lambda path: os.path.normpath(path).startswith(results + os.sep)):
        print("causal-kl: warning: this Snakemake's DAG.update_needrun is not the one causal_kl.repair wraps: a result"
              " file deleted between others is remade only by a plain `snakemake` or when named as a target",
              file=sys.stderr)


def group_components(workflow) -> dict:
    """Snakemake's --group-components, as a dict the workflow may add to (its group settings are set after parsing)."""
    settings = workflow.group_settings
    if not isinstance(settings.group_components, dict):
        settings.group_components = dict(settings.group_components)
    return settings.group_components


def declare_model_groups(workflow, cluster_groups: bool, shards: Mapping[str, int]) -> None:
    """Each grouped model rule's ``group`` (``model_rules.MODEL_RULES``): its block of shards, its point, or the run
    (``cluster.model_group_id``); none locally. Each id is registered so that Snakemake keeps the whole block in one
    group job (as ``--group-components ID=N`` would). Called once every rule is defined, as their ``group:`` would be
    set by Snakemake."""
    from causal_kl.cluster import GROUPED_RULES

    if not cluster_groups:
        return
    for name in GROUPED_RULES:
        workflow.get_rule(name).group = _group_function(workflow, name, shards)


def _group_function(workflow, rule: str, shards: Mapping[str, int]) -> Callable[[Any], str]:
    """The ``group`` of ``rule``'s jobs: a function of a job's wildcards, as Snakemake calls it."""
    from causal_kl.cluster import model_group_id, register

    return lambda wildcards: register(group_components(workflow), model_group_id(rule, wildcards, shards))


def preload_run_model(workflow, config: Mapping, model_block: Mapping, cluster_groups: bool) -> None:
    """From ``onstart`` (a local run that executes jobs; never a dry run, a cluster submission or a job's own
    Snakemake, which run no hooks): load the run's model in its server while the jobs before the first model job run,
    when the plan has model jobs (``causal_kl.jobs.gold.preload_plan``). ``model_block``: the model block the jobs
    read (their ``model`` param)."""
    if cluster_groups or not workflow.local_exec or not config.get("model_server", True):
        return
    from causal_kl.jobs.gold import preload_plan
    from causal_kl.client import preload_in_background

    model_path = config["model"]["path"]
    jobs = list(workflow.dag.needrun_jobs())
    outputs = [str(f) for job in jobs for f in job.output]
    if preload_plan({job.rule.name for job in jobs}, outputs, model_path):
        preload_in_background(
            "causal_kl.jobs.gold:preload_model",
            {"model": model_block, "dtype": config["dtype"], "device": config["device"]},
            run_log(config["run"], "model_preload"),
            device=config["device"],
            server_log=run_log(config["run"], "model_server"),
            expect_model={"path": model_path, "dtype": config["dtype"]},
        )


_PLANNERS: list = []
"""The work-ahead planner of this invocation (``plan_work_ahead``), for ``remove_work_ahead_plan``."""


def plan_work_ahead(workflow, config: Mapping, cluster_groups: bool) -> None:
    """From ``onstart`` (a local run that executes jobs, with the model server on and not ``{work_ahead: false}``):
    the plan its model servers work ahead on (``causal_kl.ahead``): the planned per-shard jobs of the run's model,
    each with the request its job will send, and, as jobs finish, which of them Snakemake has made ready, so that a
    server computes the next one while Snakemake starts it."""
    if cluster_groups or not workflow.local_exec:
        return
    from causal_kl.ahead import Planner, follow_finished_jobs, plan_path, sweep_plans, work_ahead_on
    from causal_kl.procs import find_owner

    if not work_ahead_on(config):
        return
    owner = find_owner()
    planner = Planner(plan_path(owner.pid, owner.start), config, os.getcwd())
    sweep_plans(planner.path.parent)
    if not follow_finished_jobs(planner):
        print("causal-kl: warning: this Snakemake's DAG.finish is not the one causal_kl.ahead follows: the model server "
              "computes no shard job ahead", file=sys.stderr)
        return
    _PLANNERS.append(planner)
    try:
        planner.write(workflow.dag)
    except Exception as e:  # noqa: BLE001 - an optimisation: the run goes on without it
        planner.fail(e)


def remove_work_ahead_plan() -> None:
    """From ``onsuccess`` / ``onerror``: remove the plan ``plan_work_ahead`` wrote (and what its servers marked)."""
    while _PLANNERS:
        _PLANNERS.pop().remove()


_ANALYSIS_SERVERS: list = []
"""The analysis server this invocation started (``start_analysis_server``), for ``stop_analysis_server``."""


def start_analysis_server(workflow, config: Mapping, cluster_groups: bool) -> None:
    """From ``onstart`` (a local run that executes jobs): a warm process that forks each analysis job with pandas,
    pyarrow and matplotlib already imported (``causal_kl.analysis_server``), unless the rules run in conda envs of
    their own (the server runs in Snakemake's) or on a cluster (each job on its own node)."""
    if cluster_groups or not workflow.local_exec or workflow.deployment_settings.deployment_method:
        return
    from causal_kl.analysis_server import start

    _ANALYSIS_SERVERS.append(start(run_log(config["run"], "analysis_server")))


def stop_analysis_server() -> None:
    """From ``onsuccess`` / ``onerror``: stop the analysis server ``start_analysis_server`` started (it would also go
    when Snakemake exits)."""
    from causal_kl.analysis_server import stop

    while _ANALYSIS_SERVERS:
        stop(_ANALYSIS_SERVERS.pop())


def stop_model_servers() -> None:
    """Stop the model servers this Snakemake process owns (they would also go when it exits), unless
    ``model_server: {keep_s: N}`` keeps them for the run's next invocation (``causal_kl.client.end_of_invocation``)."""
    from causal_kl.client import end_of_invocation

    end_of_invocation(os.getpid())
