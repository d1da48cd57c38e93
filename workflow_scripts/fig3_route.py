"""Rule fig3_route (rules/figures.smk): Figure 3 of one route: median KL by offset."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.figures import fig3_route

run_rule(fig3_route, snakemake)  # noqa: F821
