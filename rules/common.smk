# Shared by every rule: config validation, run paths, shard ids, wildcard constraints.
import json
import math
import sys

from snakemake.utils import validate

from causal_kl.config import config_hash, validate_config
from causal_kl.errors import CausalKLError

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
CONFIG_HASH = config_hash(config)


wildcard_constraints:
    shard=r"\d{3}",
    route=r"[A-Za-z0-9_.-]+",


def model_path():
    return config["model"]["path"]


def model_input():
    """The model directory as a Snakemake input when the demo builds it, else nothing (hub id or external path)."""
    return [config["model"]["path"]] if config.get("demo") else []


def corpus_input():
    return [config["corpus"]["path"]] if config.get("demo") else []


def gpu_count():
    """GPUs a model job asks for: 1 unless the run is pinned to the CPU (a cluster profile maps gpu=1 to --gpus=1)."""
    return 0 if config["device"] == "cpu" else 1


def gpu_resources(rule_name=None):
    """Resources for model rules, as a dict to splat into `resources:`."""
    return {"gpu": gpu_count()}


def stored_base():
    """The NLA base.parquet holding the stored golds: the configured one, or the one the demo writes."""
    return config["gold"]["stored"] or f"{R}/base.parquet"


def stored_gold():
    """The golds the conditions read: the NLA base.parquet (converted) when one is configured, else the extracted ones."""
    if config["gold"].get("stored") or config["gold"].get("write_demo_base"):
        return f"{R}/stored_gold.parquet"
    return f"{R}/gold.parquet"


def all_targets():
    targets = [f"{R}/run.json", f"{R}/sites.parquet", f"{R}/gold.parquet", f"{R}/patch.parquet"]
    # the shards themselves, so that a deleted or failed shard is rebuilt by a plain `snakemake`
    targets += expand(f"{R}/gold/shard_{{shard}}.parquet", shard=SHARDS)
    targets += expand(f"{R}/patch/floors/shard_{{shard}}.parquet", shard=SHARDS)
    targets += expand(f"{R}/patch/{{route}}/shard_{{shard}}.parquet", route=ROUTES, shard=SHARDS)
    targets += analysis_targets()
    return targets


def mem_mb(base):
    """A rule's ``mem_mb``: ``base`` MB on the first attempt, ``base * attempt`` on each retry.

    ``resources: mem_mb=mem_mb(4000)``; with ``--retries`` (set in profiles/) a job killed
    for memory is resubmitted asking for more (SLURM: ``sbatch --mem``).
    """
    return lambda wildcards, attempt: base * attempt
