"""Rule patch_route (rules/patch.smk): ``recon_goldnorm``, ``recon_rawnorm`` and ``noise_matched`` of one route for one shard."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.patch import patch_route

run_rule(patch_route, snakemake)  # noqa: F821
