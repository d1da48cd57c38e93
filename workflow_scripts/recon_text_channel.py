"""Rule recon_text_channel (rules/recon.smk): A ``text_channel`` route: logit-lens words of each gold, ridge regression from that text back to a vector."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.recon import recon_text_channel

run_rule(recon_text_channel, snakemake)  # noqa: F821
