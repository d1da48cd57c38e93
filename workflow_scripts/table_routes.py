"""Rule table_routes (rules/tables.smk): All routes side by side: loss recovered and median KL@0 with CIs, FVE."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.tables import table_routes

run_rule(table_routes, snakemake)  # noqa: F821
