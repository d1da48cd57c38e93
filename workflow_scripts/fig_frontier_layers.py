"""Rule fig_frontier_layers (rules/figures.smk): Every layer's sparsity-damage frontier in one figure."""
from causal_kl.jobs import run_analysis_rule

run_analysis_rule("causal_kl.jobs.figures:fig_frontier_layers", snakemake)  # noqa: F821
