"""Rule table_frontier_layers (rules/tables.smk): Every layer's sparsity-damage frontier table in one."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.tables import table_frontier_layers

run_rule(table_frontier_layers, snakemake)  # noqa: F821
