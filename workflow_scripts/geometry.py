"""Rule geometry (rules/recon.smk): A route's per-site geometry against the golds and its FVE summary (stops on a failed FVE re-check)."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.recon import geometry

run_rule(geometry, snakemake)  # noqa: F821
