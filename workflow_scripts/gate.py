"""The floor-check gate of the run."""
from causal_kl.analysis import setup_logging
from causal_kl import analysis_jobs as jobs

setup_logging(snakemake.log[0])
i, o, p, w = snakemake.input, snakemake.output, snakemake.params, snakemake.wildcards
jobs.job_gate(i.patch, i.get("reextract"), jobs.named(i, "geometry"), snakemake.config, o[0])
