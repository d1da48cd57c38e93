"""Rule per_site (rules/tables.smk): The route's per-site table (offset 0 of every condition, geometry, error norms, token)."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.tables import per_site

run_rule(per_site, snakemake)  # noqa: F821
