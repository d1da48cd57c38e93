"""Rule table_quartiles (rules/tables.smk): §4: the quartiles of geometric error of one route."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.tables import table_quartiles

run_rule(table_quartiles, snakemake)  # noqa: F821
