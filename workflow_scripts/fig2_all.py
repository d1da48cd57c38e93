"""Rule fig2_all (rules/figures.smk): Figure 2, every route of the run side by side."""
from causal_kl.jobs import run_analysis_rule

run_analysis_rule("causal_kl.jobs.figures:fig2_all", snakemake)  # noqa: F821
