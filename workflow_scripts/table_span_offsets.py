"""Rule table_span_offsets (rules/tables.smk): §5 for a span of k positions: median KL per condition at every offset from the span's last position"""
from causal_kl.jobs import run_analysis_rule

run_analysis_rule("causal_kl.jobs.tables:table_span_offsets", snakemake)  # noqa: F821
