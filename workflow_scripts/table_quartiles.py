"""Rule table_quartiles (rules/tables.smk): §4: the quartiles of geometric error of one route."""
from causal_kl.jobs import run_analysis_rule

run_analysis_rule("causal_kl.jobs.tables:table_quartiles", snakemake)  # noqa: F821
