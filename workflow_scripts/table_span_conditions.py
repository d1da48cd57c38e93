"""Rule table_span_conditions (rules/tables.smk): §2 for a span of k positions: every condition at the first token after the span (offset 0)."""
from causal_kl.jobs import run_analysis_rule

run_analysis_rule("causal_kl.jobs.tables:table_span_conditions", snakemake)  # noqa: F821
