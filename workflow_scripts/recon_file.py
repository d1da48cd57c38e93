"""Rule recon_file (rules/recon.smk): A ``file`` route: read, check and write reconstructions computed elsewhere."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.recon import recon_file

run_rule(recon_file, snakemake)  # noqa: F821
