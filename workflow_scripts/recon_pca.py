"""Rule recon_pca (rules/recon.smk): A ``pca`` route: projection onto the top-k principal directions of training golds."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.recon import recon_pca

run_rule(recon_pca, snakemake)  # noqa: F821
