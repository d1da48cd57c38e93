"""Rule stats_route (rules/statistics.smk): A route's statistics JSON: every statistic record plus the headline numbers."""
from causal_kl.jobs import run_analysis_rule

run_analysis_rule("causal_kl.jobs.statistics:stats_route", snakemake)  # noqa: F821
