"""Rule train_gold (rules/recon.smk): Golds of route-training documents (corpus rows ``[start, stop)``), sampled like the eval sites."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.recon import train_gold

run_rule(train_gold, snakemake)  # noqa: F821
