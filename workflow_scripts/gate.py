"""Rule gate (rules/report.smk): The floor-check gate of the run (re-extract cos, gold-repatch KL, FVE re-check)."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.report import gate

run_rule(gate, snakemake)  # noqa: F821
