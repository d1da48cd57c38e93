"""Quartile table (write-up section 4) of one route."""
from causal_kl.analysis import setup_logging
from causal_kl import analysis_jobs as jobs

setup_logging(snakemake.log[0])
i, o, p, w = snakemake.input, snakemake.output, snakemake.params, snakemake.wildcards
jobs.job_quartiles(i.per_site, i.geometry_json, i.gold, o[0], p.n_boot, p.seed, p.ci, p.reference)
