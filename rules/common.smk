# Shared by every rule: which config the run uses, checks before any job, run paths, shard ids,
# wildcard constraints, resources.
import json
import os
import re
import sys
from pathlib import Path

from snakemake.utils import validate

from causal_kl.checks import check_run, check_targets, runs_jobs_here
from causal_kl.config import DEFAULT_CONFIG, resolve_config, show_reference, validate_config
from causal_kl.errors import CausalKLError
from causal_kl.io import fingerprint
from causal_kl.reference import REFERENCE_DIR

try:
    # the run's config: the --configfile file(s) alone, else config/config.yaml (the demo); --config on top
    CONFIG_SOURCE = resolve_config(config, workflow.configfiles, workflow.config_settings.config,
                                   os.path.relpath(Path(workflow.basedir) / DEFAULT_CONFIG))
    # one-line, file/key/fix errors before snakemake's own (longer) schema report, then every check the
    # config and the files it names allow (model config.json, layer, device, corpus, route files)
    validate_config(config, source=CONFIG_SOURCE)
    check_run(config, CONFIG_SOURCE, local_exec=runs_jobs_here(sys.argv[1:]))
    check_targets(sys.argv[1:], f"results/{config['run']}", sorted(config.get("routes") or {}))
except CausalKLError as _err:
    sys.exit(f"causal-kl: {_err}")
validate(config, "../config/schema/config.schema.yaml")

if runs_jobs_here(sys.argv[1:]) and "gpu" not in workflow.global_resources:
    # one model job per GPU at a time (each job also takes one GPU slot, causal_kl.gpu), so that
    # `snakemake --cores N` on a GPU box is safe as written: model jobs run in priority order (shard
    # by shard: the model server's clean-pass cache then serves every route of a shard) while CPU
    # jobs fill the other cores. Pass --resources gpu=N to choose; cluster submission is not limited.
    from causal_kl.gpu import visible_gpus

    workflow.global_resources["gpu"] = max(1, len(visible_gpus()))

RUN = config["run"]
R = f"results/{RUN}"
LOGS = f"logs/{RUN}"
ROUTES = sorted(config.get("routes", {}))
MODEL = config["model"]
LAYER = MODEL["layer"]
SHOW_REF = show_reference(config)


wildcard_constraints:
    shard=r"\d{3}",
    route="|".join(re.escape(r) for r in ROUTES) or "(?!)",  # a target naming no configured route has no rule


def shard_ids(wildcards=None):
    """The shards that hold sites: known once the ``sites`` checkpoint has sampled them (its sites.json)."""
    with open(checkpoints.sites.get().output.stats) as fh:
        return [f"{i:03d}" for i in range(json.load(fh)["n_shards"])]


def shard_files(pattern, **kw):
    """An input function: ``pattern`` for every shard of the run (the job's wildcards and ``kw`` filled in too)."""
    return lambda wildcards: expand(pattern, shard=shard_ids(), **kw, **dict(wildcards.items()))


def model_input():
    """The model directory as a Snakemake input when the demo builds it, else nothing (hub id or external path)."""
    return [MODEL["path"]] if config.get("demo") else []


def corpus_input():
    return [config["corpus"]["path"]] if config.get("demo") else []


def mem_mb(base):
    """A rule's ``mem_mb``: ``base`` MB on the first attempt, ``base * attempt`` on each retry.

    ``resources: mem_mb=mem_mb(4000)``; with ``--retries`` (set in profiles/) a job killed
    for memory is resubmitted asking for more (SLURM: ``sbatch --mem``).
    """
    return lambda wildcards, attempt: base * attempt


MODEL_THREADS = 2
"""Threads of a model job (gold, patch, model routes)."""


def shard_priority(wildcards):
    """Model jobs of earlier shards first, every condition of a shard together (its clean passes are then shared)."""
    return 1000 - int(wildcards.shard)


def model_resources(base_mb=8000):
    """``resources:`` of a model job: one GPU unless the run is pinned to the CPU, memory growing on retry.

    A cluster profile maps ``gpu=1`` to ``--gpus=1``.
    """
    return {"gpu": 0 if config["device"] == "cpu" else 1, "mem_mb": mem_mb(base_mb)}


def stop_model_servers():
    """Stop the model servers this Snakemake process owns (they would also go when it exits)."""
    from causal_kl.server import stop_servers

    stop_servers(owner_pid=os.getpid())


def external(path):
    """A param standing for the content of a file or folder the workflow does not make (fingerprint).

    Replacing the file behind the same path changes it, so Snakemake reruns what read the file;
    the demo's own files are inputs of the rules that make them instead.
    """
    return None if config.get("demo") else fingerprint(path)


def model_params():
    """The params every model job reads: the model block (and what its folder holds), dtype and device."""
    return {"model": MODEL, "model_fingerprint": external(MODEL["path"]), "dtype": config["dtype"],
            "device": config["device"]}


def stored_base():
    """The NLA base.parquet holding the stored golds: the configured one, or the one the demo writes."""
    return config["gold"]["stored"] or f"{R}/base.parquet"


def stored_gold():
    """The golds the conditions read: the NLA base.parquet (converted) when one is configured, else the extracted ones."""
    if config["gold"].get("stored") or config["gold"].get("write_demo_base"):
        return f"{R}/stored_gold.parquet"
    return f"{R}/gold.parquet"


def reference_input(name):
    """The published table a table rule compares with, as an input (only when the run shows the reference)."""
    return [str(REFERENCE_DIR / f"{name}.csv")] if SHOW_REF else []


def per_route(pattern):
    """``pattern`` (with ``{route}``) for every route of the run, in ROUTES order."""
    return [pattern.format(route=r) for r in ROUTES]


def run_targets():
    """Every output of the run but the shards: planned (and shown by ``snakemake -n``) before sites exist."""
    return [f"{R}/run.json", f"{R}/sites.parquet", f"{R}/gold.parquet", f"{R}/patch.parquet"] + analysis_targets()


def shard_targets(wildcards):
    """The shards themselves, so that a deleted or failed shard is rebuilt by a plain ``snakemake``."""
    shards = shard_ids()
    targets = expand(f"{R}/gold/shard_{{shard}}.parquet", shard=shards)
    targets += expand(f"{R}/patch/floors/shard_{{shard}}.parquet", shard=shards)
    targets += expand(f"{R}/patch/{{route}}/shard_{{shard}}.parquet", route=ROUTES, shard=shards)
    return targets


AN = config["analysis"]
FIGS = AN["figures"]
BOOTSTRAP = {"n_boot": AN["bootstrap"], "seed": config["seed"], "ci": AN["ci"]}
"""The site bootstrap of every CI (tables and statistics)."""
FIG_NAMES = {"fig1": "fig1_geometry_vs_kl", "fig2": "fig2_damage_per_energy", "fig3": "fig3_kl_by_offset"}
ROUTE_TABLES = ("conditions", "quartiles", "offsets", "token_classes")
STATS = ("correlation", "paired", "energy", "floor_offsets")


def figure_outputs(path):
    """A figure rule's outputs: ``path``.png (in Snakemake's report, with its caption) and ``path``.svg."""
    name = Path(path).name
    caption = next((k for k, v in FIG_NAMES.items() if v == name), "fig_routes")
    sub = "{route}" if "{route}" in path else "all routes"
    return {"png": report(f"{path}.png", caption=f"../reports/{caption}.rst", category="Figures", subcategory=sub),
            "svg": f"{path}.svg"}


def analysis_targets():
    """Every table, statistic and figure of the run, plus the gate and the report."""
    t = [f"{R}/gate.json", f"{R}/report.html"]
    for r in ROUTES:
        t += [f"{R}/tables/{r}/{name}.csv" for name in ROUTE_TABLES]
        t += [f"{R}/stats/{r}/{name}.json" for name in STATS] + [f"{R}/stats/{r}.json"]
        t += [f"{R}/figures/{r}/{f}.{ext}" for f in FIG_NAMES.values() for ext in ("png", "svg")]
    if ROUTES:
        t += [f"{R}/tables/routes.csv"]
        t += [f"{R}/figures/{f}.{ext}" for f in list(FIG_NAMES.values()) + ["routes_comparison"] for ext in ("png", "svg")]
    return t
