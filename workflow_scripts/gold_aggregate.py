"""Rule gold_aggregate (rules/gold.smk): Every gold shard -> ``gold.parquet`` (empty shards, whose width is unknown, are left out)."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.gold import gold_aggregate

run_rule(gold_aggregate, snakemake)  # noqa: F821
