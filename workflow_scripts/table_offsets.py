"""Offsets table (write-up section 5) of one route."""
from causal_kl.analysis import setup_logging
from causal_kl import analysis_jobs as jobs

setup_logging(snakemake.log[0])
i, o, p, w = snakemake.input, snakemake.output, snakemake.params, snakemake.wildcards
jobs.job_offsets(i.patch, snakemake.wildcards.route, o[0], p.reference)
