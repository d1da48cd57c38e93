"""Rule table_offsets (rules/tables.smk): §5: median KL per condition at every offset, for one route."""
from causal_kl.jobs import run_analysis_rule

run_analysis_rule("causal_kl.jobs.tables:table_offsets", snakemake)  # noqa: F821
