"""The self-contained HTML report of the run."""
from causal_kl.analysis import setup_logging
from causal_kl import analysis_jobs as jobs

setup_logging(snakemake.log[0])
i, o, p, w = snakemake.input, snakemake.output, snakemake.params, snakemake.wildcards
from causal_kl.report import build_report

build_report(i.run, i.gate, p.routes, p.comparison, o[0], reference=p.reference)
