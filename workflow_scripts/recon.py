"""Rules recon_<kind>: a route's reconstructions (the route kind's reconstruct step)."""
from causal_kl.logs import run_script
from causal_kl.routes import reconstruct_job

run_script(reconstruct_job, snakemake)  # noqa: F821
