"""Rule recon_nla_ar (rules/recon.smk): An ``nla_ar`` route (and an ``nla_av`` route's second step): the AR reconstructs each site from its explanation."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.recon import recon_nla_ar

run_rule(recon_nla_ar, snakemake)  # noqa: F821
