"""Rule gold (rules/gold.smk): Block-L output at each site of one shard."""
from causal_kl.jobs import run_model_rule

run_model_rule("causal_kl.jobs.gold:gold", snakemake)  # noqa: F821
