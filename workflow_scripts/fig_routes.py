"""Multi-route comparison figure."""
from causal_kl.analysis import setup_logging
from causal_kl import analysis_jobs as jobs

setup_logging(snakemake.log[0])
i, o, p, w = snakemake.input, snakemake.output, snakemake.params, snakemake.wildcards
jobs.job_fig_routes(i.routes, o.png, o.svg, p.dpi, **p.style)
