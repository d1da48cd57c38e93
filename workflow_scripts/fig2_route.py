"""Rule fig2_route (rules/figures.smk): Figure 2 of one route: damage per unit squared error norm, noise = 1."""
from causal_kl.jobs import run_analysis_rule

run_analysis_rule("causal_kl.jobs.figures:fig2_route", snakemake)  # noqa: F821
