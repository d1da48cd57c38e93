"""Rule patch_aggregate (rules/patch.smk): Every shard of the floors and of every route -> ``results/{run}/patch.parquet``."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.patch import patch_aggregate

run_rule(patch_aggregate, snakemake)  # noqa: F821
