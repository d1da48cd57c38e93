"""Rule fig_spans (rules/figures.smk): Median KL after the span and loss recovered against span length, per condition, with CIs."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.figures import fig_spans

run_rule(fig_spans, snakemake)  # noqa: F821
