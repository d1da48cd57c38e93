"""Rule fig1_all (rules/figures.smk): Figure 1, one panel per route of the run."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.figures import fig1_all

run_rule(fig1_all, snakemake)  # noqa: F821
