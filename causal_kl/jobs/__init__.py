"""The job layer: one module per rule file of ``rules/``, one function per rule, named after the rule.

A newcomer goes ``rules/x.smk: rule y`` -> ``workflow_scripts/y.py`` -> ``causal_kl/jobs/x.py: y()``
and from there into the domain modules. A job function takes keyword arguments named exactly
like its rule's named ``input``, ``output``, ``params`` and wildcards (never the whole config),
plus ``provenance`` when it writes parquet files: the record ``run_rule`` builds for every job
(config hash, run, model, layer, rule), stored in each output's metadata with the code version.
Every workflow script is the same three lines::

    from causal_kl.jobs import run_rule
    from causal_kl.jobs.whole_context import whole_context
    run_rule(whole_context, snakemake)

except the per-shard model rules', which name their job (``run_model_rule("causal_kl.jobs.gold:gold", snakemake)``)
so that their process imports no numpy, pyarrow or pandas, and the analysis rules', which name theirs
(``run_analysis_rule("causal_kl.jobs.tables:per_site", snakemake)``) so that a child of the invocation's analysis
server (``causal_kl.analysis_server``), with those libraries imported once, runs it.

``tests/test_layout.py`` walks every rule of the parsed workflow and checks that this holds.

Model jobs (the rules of ``causal_kl.model_rules.MODEL_RULES``: gold extraction, patching, the model routes) run
inside the model server of their GPU slot (``causal_kl.server``): the model is loaded once per GPU per run and
serves every such job; the job's own process imports neither torch nor transformers (job modules
import their model code inside the functions). ``model_server: false`` in the config runs them
in their own process instead.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any, Callable

from causal_kl.model_rules import is_model_rule
from causal_kl.paths import run_log

PROVENANCE = "provenance"
"""The one job argument that is not a rule field: the job's provenance record."""


def _plain(value: Any) -> Any:
    """Snakemake's named-list values as plain strings / lists of strings; params as they are."""
    if isinstance(value, (str, int, float, bool, dict)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value) if hasattr(value, "__fspath__") else value


def rule_fields(snakemake: Any) -> dict[str, Any]:
    """``{name: value}`` of the job's named input, output, params and wildcards."""
    fields: dict[str, Any] = {}
    for part in ("input", "output", "params", "wildcards"):
        for name, value in getattr(snakemake, part).items():
            if name in fields:
                raise TypeError(f"rule {snakemake.rule}: '{name}' names two fields; give inputs, outputs and params distinct names")
            fields[name] = value if part == "params" else _plain(value)
    return fields


def job_provenance(config: dict, rule: str, wildcards: dict | None = None) -> dict[str, Any]:
    """What every output of a job records about where it came from (with ``causal_kl.io.provenance``):
    the config's hash, run and model, the rule, and the job's point (its ``{layer}`` wildcard, ``3`` or
    ``3.mlp_out``: its layer, hook and name; the config's ``model.layer`` for a job of no one point) and span where it
    has one."""
    from causal_kl.config import config_hash
    from causal_kl.hooks import parse_point

    model = config.get("model") or {}
    wildcards = wildcards or {}
    point = parse_point(wildcards["layer"]) if "layer" in wildcards else None
    record = {"config_hash": config_hash(config), "run": config.get("run"), "model": model.get("path"),
              "layer": point.layer if point else model.get("layer"), "rule": rule}
    if point is not None:
        record.update(hook=point.hook, point=point.name)
    if "span" in wildcards:
        record["span"] = int(wildcards["span"])
    return record


def kwargs_for(func: Callable[..., None], fields: dict[str, Any], provenance: Callable[[], dict]) -> dict[str, Any]:
    """The keyword arguments ``func`` gets: the rule's ``fields``, plus ``provenance()`` when it takes it."""
    kwargs = dict(fields)
    if PROVENANCE in inspect.signature(func).parameters:
        kwargs[PROVENANCE] = provenance()
    return kwargs


def job_kwargs(func: Callable[..., None], snakemake: Any) -> dict[str, Any]:
    """The keyword arguments ``func`` gets for this job: the rule's fields (+ provenance when it takes it)."""
    return kwargs_for(func, rule_fields(snakemake),
                      lambda: job_provenance(snakemake.config, snakemake.rule, dict(snakemake.wildcards.items())))


def job_function(target: str) -> Callable[..., Any]:
    """The function ``target`` names (``"causal_kl.jobs.gold:gold"``: module, colon, attribute path), imported: how a
    model rule's or analysis rule's script, the model server and the analysis server's children find a job."""
    import importlib

    from causal_kl.errors import CausalKLError

    module, _, name = target.partition(":")
    if not module or not name:
        raise CausalKLError(None, "func", f"{target!r} is not 'package.module:function'", "name the job function as module:function")
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def run_rule(func: Callable[..., None], snakemake: Any) -> None:
    """Run a rule's job function with logging to the rule's log; a CausalKLError becomes one line and exit 1 (when it
    names an input this run's rules wrote, that file is removed first: ``causal_kl.repair.remove_bad_input``).

    The job of a model rule (``causal_kl.model_rules.MODEL_RULES``) runs in its slot's model server (loaded once per
    GPU per run) unless the config says ``model_server: false``.
    """
    kwargs = job_kwargs(func, snakemake)
    remote = is_model_rule(snakemake.rule) and snakemake.config.get("model_server", True)
    _run_job(lambda log_path: _run_in_server(func, kwargs, log_path, snakemake) if remote else func(**kwargs),
             func.__name__, remote, snakemake)


def run_model_rule(target: str, snakemake: Any) -> None:
    """``run_rule`` for a per-shard model rule, named ``"causal_kl.jobs.x:rule"`` rather than imported: with the model
    server on, the job's process sends the rule's fields (and provenance: every such job function takes it) to the
    server without importing the job's module, which pulls numpy, pyarrow and pandas into a process that only waits
    (about half of its start-up, the largest part of the gaps between model requests: issue #32 item 3). With
    ``model_server: false`` it imports the function and is ``run_rule``.
    """
    if not snakemake.config.get("model_server", True):
        run_rule(job_function(target), snakemake)
        return
    kwargs = model_job_kwargs(snakemake)
    _run_job(lambda log_path: _run_remote(target, kwargs, log_path, snakemake), target, True, snakemake)


def model_job_kwargs(snakemake: Any) -> dict[str, Any]:
    """What a per-shard model job sends to the server: its rule's fields and its provenance (every such job function
    takes it). The model server's plan (``causal_kl.ahead``) builds the same from Snakemake's planned job, so that a
    job computed ahead is claimed only by the request that is exactly it."""
    kwargs = rule_fields(snakemake)
    kwargs[PROVENANCE] = job_provenance(snakemake.config, snakemake.rule, dict(snakemake.wildcards.items()))
    return kwargs


def run_analysis_rule(target: str, snakemake: Any) -> None:
    """``run_rule`` for an analysis rule (envs/analysis.yaml: tables, statistics, figures, the report), named
    ``"causal_kl.jobs.x:rule"`` rather than imported: when the invocation runs an analysis server
    (``causal_kl.analysis_server``, started from the Snakefile's ``onstart``), a child forked from it runs the job
    with the libraries already imported, and the job's own process imports none of pandas, pyarrow, numpy or
    matplotlib (most of an analysis job's CPU time: issue #32 item 5); without a server, it is ``run_rule``.
    """
    import os

    from causal_kl.analysis_server import ADDRESS_ENV, connect, run_in_server

    sock = connect(os.environ.get(ADDRESS_ENV))
    if sock is None:
        run_rule(job_function(target), snakemake)
        return
    fields = rule_fields(snakemake)
    wildcards = dict(snakemake.wildcards.items())
    _run_job(lambda log_path: run_in_server(sock, target, fields, dict(snakemake.config), snakemake.rule, wildcards,
                                            log_path), target, True, snakemake)


def _run_job(call: Callable[[str | None], Any], name: str, remote: bool, snakemake: Any) -> None:
    from causal_kl.errors import CausalKLError
    from causal_kl.repair import job_input_files, remove_bad_input

    log_path = str(snakemake.log[0]) if snakemake.log else None
    try:
        if remote:
            call(log_path)
        else:
            from causal_kl.logs import setup

            setup(log_path)
            try:
                call(log_path)
            except Exception as e:
                if not isinstance(e, CausalKLError):  # a bug: its traceback belongs in the job's log too
                    import logging

                    logging.getLogger("causal_kl").exception("%s failed", name)
                raise
    except CausalKLError as e:
        import logging

        if not remote:  # the server already wrote the job's error into its log
            logging.getLogger("causal_kl").error("%s", e)
        # a bad file this run's own rules wrote (a truncated shard) is removed, so the same command remakes it
        reported = remove_bad_input(e, job_input_files(snakemake), snakemake.config.get("run"))
        if reported is not e:
            removed = f"removed {e.file}; rerun the same command to remake it"
            if remote:  # the server wrote the job's log; this process has no handler on it
                from causal_kl.logs import append

                append(log_path, "ERROR", removed)
            else:
                logging.getLogger("causal_kl").error("%s", removed)
        print(f"causal-kl: {reported}", file=sys.stderr)
        sys.exit(1)


def _run_in_server(func: Callable[..., None], kwargs: dict, log_path: str | None, snakemake: Any) -> None:
    _run_remote(f"{func.__module__}:{func.__name__}", kwargs, log_path, snakemake)


def _run_remote(target: str, kwargs: dict, log_path: str | None, snakemake: Any) -> None:
    from causal_kl.client import run_remote

    config = snakemake.config
    model = kwargs.get("model")
    expect = {"path": model["path"], "dtype": kwargs.get("dtype")} if isinstance(model, dict) else None
    run_remote(target, kwargs, log_path, device=config.get("device", "auto"),
               threads=snakemake.threads, expect_model=expect,
               server_log=run_log(config.get("run", "run"), "model_server"))
