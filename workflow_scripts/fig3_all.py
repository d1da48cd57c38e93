"""Rule fig3_all (rules/figures.smk): Figure 3, one panel per route of the run."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.figures import fig3_all

run_rule(fig3_all, snakemake)  # noqa: F821
