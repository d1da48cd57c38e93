"""Rule table_routes (rules/tables.smk): All routes side by side: loss recovered and median KL@0 with CIs, FVE."""
from causal_kl.jobs import run_analysis_rule

run_analysis_rule("causal_kl.jobs.tables:table_routes", snakemake)  # noqa: F821
