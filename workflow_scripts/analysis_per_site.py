"""A route's per-site table at offset 0."""
from causal_kl.analysis import setup_logging
from causal_kl import analysis_jobs as jobs

setup_logging(snakemake.log[0])
i, o, p, w = snakemake.input, snakemake.output, snakemake.params, snakemake.wildcards
jobs.job_per_site(i.patch, i.geometry, i.error_norms, i.sites, snakemake.wildcards.route, o[0])
