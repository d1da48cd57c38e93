"""Rule table_span_conditions (rules/tables.smk): §2 for a span of k positions: every condition at the first token after the span (offset 0)."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.tables import table_span_conditions

run_rule(table_span_conditions, snakemake)  # noqa: F821
