"""Multi-route comparison table."""
from causal_kl import analysis_jobs as jobs
from causal_kl.logs import run_script


def main(s):
    i, o = s.input, s.output
    jobs.job_routes(jobs.named(i, "conditions"), jobs.named(i, "geometry"), o[0])


run_script(main, snakemake)  # noqa: F821
