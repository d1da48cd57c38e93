"""Rule fig_layers (rules/figures.smk): A sweep's layers: median KL@0 and loss recovered per route and floor, and FVE, against layer."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.figures import fig_layers

run_rule(fig_layers, snakemake)  # noqa: F821
