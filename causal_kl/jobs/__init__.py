"""The job layer: one module per rule file of ``rules/``, one function per rule, named after the rule.

A newcomer goes ``rules/x.smk: rule y`` -> ``workflow_scripts/y.py`` -> ``causal_kl/jobs/x.py: y()``
and from there into the domain modules. A job function takes keyword arguments named exactly
like its rule's named ``input``, ``output``, ``params`` and wildcards (never the whole config),
plus ``provenance`` when it writes parquet files: the record ``run_rule`` builds for every job
(config hash, run, model, layer, rule), stored in each output's metadata with the code version.
Every workflow script is the same three lines::

    from causal_kl.jobs import run_rule
    from causal_kl.jobs.gold import gold
    run_rule(gold, snakemake)

``tests/test_layout.py`` walks every rule of the parsed workflow and checks that this holds.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any, Callable

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


def job_provenance(config: dict, rule: str) -> dict[str, Any]:
    """What every output of a job records about where it came from (with ``causal_kl.io.provenance``)."""
    from causal_kl.config import config_hash

    model = config.get("model") or {}
    return {"config_hash": config_hash(config), "run": config.get("run"), "model": model.get("path"),
            "layer": model.get("layer"), "rule": rule}


def job_kwargs(func: Callable[..., None], snakemake: Any) -> dict[str, Any]:
    """The keyword arguments ``func`` gets for this job: the rule's fields (+ provenance when it takes it)."""
    kwargs = rule_fields(snakemake)
    if PROVENANCE in inspect.signature(func).parameters:
        kwargs[PROVENANCE] = job_provenance(snakemake.config, snakemake.rule)
    return kwargs


def run_rule(func: Callable[..., None], snakemake: Any) -> None:
    """Run a rule's job function with logging to the rule's log; a CausalKLError becomes one line and exit 1."""
    from causal_kl.errors import CausalKLError
    from causal_kl.logs import setup

    log = setup(list(snakemake.log) if snakemake.log else None)
    try:
        func(**job_kwargs(func, snakemake))
    except CausalKLError as e:
        log.error("%s", e)
        print(f"causal-kl: {e}", file=sys.stderr)
        sys.exit(1)
