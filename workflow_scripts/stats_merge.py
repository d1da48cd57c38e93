"""A route's statistics JSON: every record plus the headline."""
from causal_kl import analysis_jobs as jobs
from causal_kl.logs import run_script


def main(s):
    i, o = s.input, s.output
    jobs.job_stats_merge(jobs.named(i, "part"), i.conditions, i.geometry_json, s.wildcards.route, o[0])


run_script(main, snakemake)  # noqa: F821
