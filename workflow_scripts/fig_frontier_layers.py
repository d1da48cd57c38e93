"""Rule fig_frontier_layers (rules/figures.smk): Every layer's sparsity-damage frontier in one figure."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.figures import fig_frontier_layers

run_rule(fig_frontier_layers, snakemake)  # noqa: F821
