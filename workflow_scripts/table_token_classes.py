"""Rule table_token_classes (rules/tables.smk): Median KL@0 of the route conditions by token class (digits and the configured classes)."""
from causal_kl.jobs import run_analysis_rule

run_analysis_rule("causal_kl.jobs.tables:table_token_classes", snakemake)  # noqa: F821
