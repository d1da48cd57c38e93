"""Conditions table (write-up section 2) of one route."""
from causal_kl import analysis_jobs as jobs
from causal_kl.logs import run_script


def main(s):
    i, o, p = s.input, s.output, s.params
    jobs.job_conditions(i.per_site, o[0], p.n_boot, p.seed, p.ci, p.reference)


run_script(main, snakemake)  # noqa: F821
