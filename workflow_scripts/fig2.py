"""Figure 2: damage per unit squared error norm, noise = 1."""
from causal_kl.analysis import setup_logging
from causal_kl import analysis_jobs as jobs

setup_logging(snakemake.log[0])
i, o, p, w = snakemake.input, snakemake.output, snakemake.params, snakemake.wildcards
jobs.job_fig2(jobs.named(i, "energy", w.get("route")), o.png, o.svg, p.dpi, **p.style)
