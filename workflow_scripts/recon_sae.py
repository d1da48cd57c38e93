"""Rule recon_sae (rules/recon.smk): An ``sae`` route: decode(encode(gold)) in float32, and the SAE's L0 and dead latents on the eval golds."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.recon import recon_sae

run_rule(recon_sae, snakemake)  # noqa: F821
