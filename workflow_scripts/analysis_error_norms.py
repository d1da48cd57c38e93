"""Route-independent error norms per site (resamples, zero, mean)."""
from causal_kl.analysis import setup_logging
from causal_kl import analysis_jobs as jobs

setup_logging(snakemake.log[0])
i, o, p, w = snakemake.input, snakemake.output, snakemake.params, snakemake.wildcards
jobs.job_error_norms(i.gold, i.choices, i.mean, o[0])
