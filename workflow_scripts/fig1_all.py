"""Rule fig1_all (rules/figures.smk): Figure 1, one panel per route of the run."""
from causal_kl.jobs import run_analysis_rule

run_analysis_rule("causal_kl.jobs.figures:fig1_all", snakemake)  # noqa: F821
