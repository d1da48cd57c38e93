"""Rule table_frontier (rules/tables.smk): The sparsity-damage frontier of a layer's routes (L0 or FVE against median KL@0, loss recovered, SAELens' kl_div_score)."""
from causal_kl.jobs import run_analysis_rule

run_analysis_rule("causal_kl.jobs.tables:table_frontier", snakemake)  # noqa: F821
