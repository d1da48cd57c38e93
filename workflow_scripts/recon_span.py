"""Rule recon_span (rules/spans.smk): A route's reconstruction of the golds at a span's extra positions; a route that cannot reconstruct other"""
from causal_kl.jobs import run_rule
from causal_kl.jobs.spans import recon_span

run_rule(recon_span, snakemake)  # noqa: F821
