"""One statistic record of one route (params.kind names it)."""
from causal_kl import analysis_jobs as jobs
from causal_kl.logs import run_script


def main(s):
    i, o, p = s.input, s.output, s.params
    jobs.job_stat(p.kind, o[0], per_site=i.get("per_site"), offsets=i.get("offsets"), **p.options)


run_script(main, snakemake)  # noqa: F821
