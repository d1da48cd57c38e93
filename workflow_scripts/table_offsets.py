"""Rule table_offsets (rules/tables.smk): §5: median KL per condition at every offset, for one route."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.tables import table_offsets

run_rule(table_offsets, snakemake)  # noqa: F821
