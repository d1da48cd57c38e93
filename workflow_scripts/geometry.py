"""A route's geometry against the golds (rule geometry): per-site table and FVE summary."""
from causal_kl.analysis import setup_logging
from causal_kl.geometry import compute_geometry

setup_logging(snakemake.log[0])  # noqa: F821
compute_geometry(snakemake.input.recon, snakemake.input.gold, snakemake.input.sites,  # noqa: F821
                 snakemake.output.table, snakemake.output.summary, snakemake.wildcards.route, snakemake.config)  # noqa: F821
