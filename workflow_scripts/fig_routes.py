"""Rule fig_routes (rules/figures.smk): Multi-route comparison: loss recovered and median KL@0 per route, with CIs."""
from causal_kl.jobs import run_analysis_rule

run_analysis_rule("causal_kl.jobs.figures:fig_routes", snakemake)  # noqa: F821
