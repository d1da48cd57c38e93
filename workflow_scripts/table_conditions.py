"""Rule table_conditions (rules/tables.smk): §2: the conditions table of one route."""
from causal_kl.jobs import run_analysis_rule

run_analysis_rule("causal_kl.jobs.tables:table_conditions", snakemake)  # noqa: F821
