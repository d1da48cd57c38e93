"""Rule fig_layers (rules/figures.smk): A sweep's layers: median KL@0 and loss recovered per route and floor, and FVE, against layer."""
from causal_kl.jobs import run_analysis_rule

run_analysis_rule("causal_kl.jobs.figures:fig_layers", snakemake)  # noqa: F821
