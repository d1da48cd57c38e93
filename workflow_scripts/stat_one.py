"""One statistic record of one route (params.kind names it)."""
from causal_kl.analysis import setup_logging
from causal_kl import analysis_jobs as jobs

setup_logging(snakemake.log[0])
i, o, p, w = snakemake.input, snakemake.output, snakemake.params, snakemake.wildcards
jobs.job_stat(p.kind, o[0], per_site=i.get("per_site"), offsets=i.get("offsets"), **p.options)
