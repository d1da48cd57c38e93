"""Route-independent error norms per site (resamples, zero, mean)."""
from causal_kl import analysis_jobs as jobs
from causal_kl.logs import run_script


def main(s):
    i, o = s.input, s.output
    jobs.job_error_norms(i.gold, i.choices, i.mean, o[0])


run_script(main, snakemake)  # noqa: F821
