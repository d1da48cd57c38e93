"""Rule patch_route (rules/patch.smk): ``recon_goldnorm``, ``recon_rawnorm`` and ``noise_matched`` of one route for one shard."""
from causal_kl.jobs import run_model_rule

run_model_rule("causal_kl.jobs.patch:patch_route", snakemake)  # noqa: F821
