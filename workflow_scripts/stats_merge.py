"""A route's statistics JSON: every record plus the headline."""
from causal_kl.analysis import setup_logging
from causal_kl import analysis_jobs as jobs

setup_logging(snakemake.log[0])
i, o, p, w = snakemake.input, snakemake.output, snakemake.params, snakemake.wildcards
jobs.job_stats_merge(jobs.named(i, "part"), i.conditions, i.geometry_json, snakemake.wildcards.route, o[0])
