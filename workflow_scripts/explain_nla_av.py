"""Rule explain_nla_av (rules/recon.smk): An ``nla_av`` route's first step: the AV verbalises every eval gold; its explanations feed ``recon_nla_ar``."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.recon import explain_nla_av

run_rule(explain_nla_av, snakemake)  # noqa: F821
