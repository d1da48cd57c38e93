"""Rule report_html (rules/report.smk): The run's report: one self-contained HTML file (figures embedded) built from the analysis outputs."""
from causal_kl.jobs import run_analysis_rule

run_analysis_rule("causal_kl.jobs.report:report_html", snakemake)  # noqa: F821
