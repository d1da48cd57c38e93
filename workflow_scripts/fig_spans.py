"""Rule fig_spans (rules/figures.smk): Median KL after the span and loss recovered against span length, per condition, with CIs."""
from causal_kl.jobs import run_analysis_rule

run_analysis_rule("causal_kl.jobs.figures:fig_spans", snakemake)  # noqa: F821
