"""Rule error_norms (rules/tables.smk): Route-independent error norms per site (resamples, zero, mean)."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.tables import error_norms

run_rule(error_norms, snakemake)  # noqa: F821
