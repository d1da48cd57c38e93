"""Rule table_conditions (rules/tables.smk): §2: the conditions table of one route."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.tables import table_conditions

run_rule(table_conditions, snakemake)  # noqa: F821
