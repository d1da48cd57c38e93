"""Rule fig3_route (rules/figures.smk): Figure 3 of one route: median KL by offset."""
from causal_kl.jobs import run_analysis_rule

run_analysis_rule("causal_kl.jobs.figures:fig3_route", snakemake)  # noqa: F821
