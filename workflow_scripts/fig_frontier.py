"""Rule fig_frontier (rules/figures.smk): A layer's sparsity-damage frontier: damage against L0 and FVE, the non-dominated routes marked."""
from causal_kl.jobs import run_analysis_rule

run_analysis_rule("causal_kl.jobs.figures:fig_frontier", snakemake)  # noqa: F821
