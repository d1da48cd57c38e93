"""Rule gold (rules/gold.smk): Block-L output at each site of one shard."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.gold import gold

run_rule(gold, snakemake)  # noqa: F821
