"""Rule patch_floors_aggregate (rules/patch.smk): Every floors shard -> patch/floors.parquet (what every route's analysis compares with)."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.patch import patch_floors_aggregate

run_rule(patch_floors_aggregate, snakemake)  # noqa: F821
