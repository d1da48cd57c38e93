"""Rule span_conditions (rules/spans.smk): A span's seeded resample choices (among the sites whose span fits) and its extra positions' noise"""
from causal_kl.jobs import run_rule
from causal_kl.jobs.spans import span_conditions

run_rule(span_conditions, snakemake)  # noqa: F821
