# Shared by every rule: config validation, run paths, shard ids, wildcard constraints, resources.
import math
from pathlib import Path
import sys

from snakemake.utils import validate

from causal_kl.config import show_reference, validate_config
from causal_kl.errors import CausalKLError
from causal_kl.reference import REFERENCE_DIR

try:
    # one-line, file/key/fix error before snakemake's own (longer) schema report
    validate_config(config, source=(workflow.configfiles[-1] if workflow.configfiles else "config"))
except CausalKLError as _err:
    sys.exit(f"causal-kl: {_err}")
validate(config, "../config/schema/config.schema.yaml")

RUN = config["run"]
R = f"results/{RUN}"
LOGS = f"logs/{RUN}"
N_SHARDS = math.ceil(config["sites"]["max_sites"] / config["sites"]["shard_size"])
SHARDS = [f"{i:03d}" for i in range(N_SHARDS)]
ROUTES = sorted(config.get("routes", {}))
MODEL = config["model"]
LAYER = MODEL["layer"]
SHOW_REF = show_reference(config)


wildcard_constraints:
    shard=r"\d{3}",
    route=r"[A-Za-z0-9_.-]+",


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


def model_resources(base_mb=8000):
    """``resources:`` of a model job: one GPU unless the run is pinned to the CPU, memory growing on retry.

    A cluster profile maps ``gpu=1`` to ``--gpus=1``.
    """
    return {"gpu": 0 if config["device"] == "cpu" else 1, "mem_mb": mem_mb(base_mb)}


def model_params():
    """The params every model job reads: the model block, dtype and device."""
    return {"model": MODEL, "dtype": config["dtype"], "device": config["device"]}


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


def all_targets():
    targets = [f"{R}/run.json", f"{R}/sites.parquet", f"{R}/gold.parquet", f"{R}/patch.parquet"]
    # the shards themselves, so that a deleted or failed shard is rebuilt by a plain `snakemake`
    targets += expand(f"{R}/gold/shard_{{shard}}.parquet", shard=SHARDS)
    targets += expand(f"{R}/patch/floors/shard_{{shard}}.parquet", shard=SHARDS)
    targets += expand(f"{R}/patch/{{route}}/shard_{{shard}}.parquet", route=ROUTES, shard=SHARDS)
    targets += analysis_targets()
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
