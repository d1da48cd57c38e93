"""Figure 1: direction-MSE vs KL@0 (one panel per route given)."""
from causal_kl.analysis import setup_logging
from causal_kl import analysis_jobs as jobs

setup_logging(snakemake.log[0])
i, o, p, w = snakemake.input, snakemake.output, snakemake.params, snakemake.wildcards
jobs.job_fig1(jobs.named(i, "per_site", w.get("route")), jobs.named(i, "correlation", w.get("route")), o.png, o.svg, p.dpi, **p.style)
