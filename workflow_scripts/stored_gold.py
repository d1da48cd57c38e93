"""Rule stored_gold (rules/gold.smk): Map the NLA base.parquet onto the sites, check it against the re-extracted golds, keep it as the stored golds."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.gold import stored_gold

run_rule(stored_gold, snakemake)  # noqa: F821
