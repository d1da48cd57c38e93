"""A route's per-site table at offset 0."""
from causal_kl import analysis_jobs as jobs
from causal_kl.logs import run_script


def main(s):
    i, o = s.input, s.output
    jobs.job_per_site(i.patch, i.geometry, i.error_norms, i.sites, s.wildcards.route, o[0])


run_script(main, snakemake)  # noqa: F821
