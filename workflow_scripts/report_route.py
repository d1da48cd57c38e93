"""Rule report_route (rules/report.smk): One route's page at one layer: its tables, statistics, figures, SAELens' scores and spans, linked to the main page."""
from causal_kl.jobs import run_analysis_rule

run_analysis_rule("causal_kl.jobs.report:report_route", snakemake)  # noqa: F821
