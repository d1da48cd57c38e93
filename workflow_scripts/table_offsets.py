"""Offsets table (write-up section 5) of one route."""
from causal_kl import analysis_jobs as jobs
from causal_kl.logs import run_script


def main(s):
    i, o, p = s.input, s.output, s.params
    jobs.job_offsets(i.patch, s.wildcards.route, o[0], p.reference)


run_script(main, snakemake)  # noqa: F821
