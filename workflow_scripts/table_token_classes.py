"""Token-class table of one route."""
from causal_kl.analysis import setup_logging
from causal_kl import analysis_jobs as jobs

setup_logging(snakemake.log[0])
i, o, p, w = snakemake.input, snakemake.output, snakemake.params, snakemake.wildcards
jobs.job_token_classes(i.per_site, p.model, p.classes, o[0], p.reference, i.geometry_json)
