"""Rule table_spans (rules/tables.smk): Every span length side by side: median KL at offsets after the span and loss recovered, with CIs, and how"""
from causal_kl.jobs import run_rule
from causal_kl.jobs.tables import table_spans

run_rule(table_spans, snakemake)  # noqa: F821
