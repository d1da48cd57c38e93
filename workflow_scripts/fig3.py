"""Figure 3: median KL by offset."""
from causal_kl.analysis import setup_logging
from causal_kl import analysis_jobs as jobs

setup_logging(snakemake.log[0])
i, o, p, w = snakemake.input, snakemake.output, snakemake.params, snakemake.wildcards
jobs.job_fig3(jobs.named(i, "offsets", w.get("route")), o.png, o.svg, p.dpi, **p.style)
