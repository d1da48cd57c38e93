"""Rule fig2_all (rules/figures.smk): Figure 2, every route of the run side by side."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.figures import fig2_all

run_rule(fig2_all, snakemake)  # noqa: F821
