"""Rule per_site (rules/tables.smk): The route's per-site table (offset 0 of every condition, geometry, error norms, token)."""
from causal_kl.jobs import run_analysis_rule

run_analysis_rule("causal_kl.jobs.tables:per_site", snakemake)  # noqa: F821
