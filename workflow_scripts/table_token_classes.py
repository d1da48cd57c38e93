"""Rule table_token_classes (rules/tables.smk): Median KL@0 of the route conditions by token class (digits and the configured classes)."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.tables import table_token_classes

run_rule(table_token_classes, snakemake)  # noqa: F821
