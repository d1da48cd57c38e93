"""Rule report_html (rules/report.smk): The run's report: one self-contained HTML file (figures embedded) built from the analysis outputs."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.report import report_html

run_rule(report_html, snakemake)  # noqa: F821
