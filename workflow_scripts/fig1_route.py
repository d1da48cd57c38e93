"""Rule fig1_route (rules/figures.smk): Figure 1 of one route: direction-MSE vs KL@0 per site."""
from causal_kl.jobs import run_analysis_rule

run_analysis_rule("causal_kl.jobs.figures:fig1_route", snakemake)  # noqa: F821
