"""Rule patch_route: recon_goldnorm, recon_rawnorm and noise_matched of one route for one shard."""
from causal_kl.logs import run_script
from causal_kl.stages import stage_patch_route

run_script(lambda s: stage_patch_route(s.config, s.wildcards.route, s.input.sites, s.input.docs, s.input.gold,
                                       s.input.recon, s.input.noise, s.output[0]), snakemake)  # noqa: F821
