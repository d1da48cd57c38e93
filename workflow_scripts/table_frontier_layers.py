"""Rule table_frontier_layers (rules/tables.smk): Every layer's sparsity-damage frontier table in one."""
from causal_kl.jobs import run_analysis_rule

run_analysis_rule("causal_kl.jobs.tables:table_frontier_layers", snakemake)  # noqa: F821
