"""Rule stats_route (rules/statistics.smk): A route's statistics JSON: every statistic record plus the headline numbers."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.statistics import stats_route

run_rule(stats_route, snakemake)  # noqa: F821
