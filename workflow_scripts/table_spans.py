"""Rule table_spans (rules/tables.smk): Every span length side by side: median KL at offsets after the span and loss recovered, with CIs, and how"""
from causal_kl.jobs import run_analysis_rule

run_analysis_rule("causal_kl.jobs.tables:table_spans", snakemake)  # noqa: F821
