"""Rule gate (rules/report.smk): The floor-check gate of the run (re-extract cos, gold-repatch KL, FVE re-check)."""
from causal_kl.jobs import run_analysis_rule

run_analysis_rule("causal_kl.jobs.report:gate", snakemake)  # noqa: F821
