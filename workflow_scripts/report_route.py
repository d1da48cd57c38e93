"""Rule report_route (rules/report.smk): One route's page at one layer: its tables, statistics, figures, SAELens' scores and spans, linked to the main page."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.report import report_route

run_rule(report_route, snakemake)  # noqa: F821
