"""Rule fig_routes (rules/figures.smk): Multi-route comparison: loss recovered and median KL@0 per route, with CIs."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.figures import fig_routes

run_rule(fig_routes, snakemake)  # noqa: F821
