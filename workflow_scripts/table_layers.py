"""Rule table_layers (rules/tables.smk): Every layer of a sweep: per route and floor, median KL@0 and loss recovered (with CIs), and FVE."""
from causal_kl.jobs import run_analysis_rule

run_analysis_rule("causal_kl.jobs.tables:table_layers", snakemake)  # noqa: F821
