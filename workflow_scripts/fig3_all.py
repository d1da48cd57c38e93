"""Rule fig3_all (rules/figures.smk): Figure 3, one panel per route of the run."""
from causal_kl.jobs import run_analysis_rule

run_analysis_rule("causal_kl.jobs.figures:fig3_all", snakemake)  # noqa: F821
