"""Rule table_frontier (rules/tables.smk): The sparsity-damage frontier of a layer's routes (L0 or FVE against median KL@0, loss recovered, SAELens' kl_div_score)."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.tables import table_frontier

run_rule(table_frontier, snakemake)  # noqa: F821
