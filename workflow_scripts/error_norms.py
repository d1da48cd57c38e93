"""Rule error_norms (rules/tables.smk): Route-independent error norms per site (resamples, zero, mean)."""
from causal_kl.jobs import run_analysis_rule

run_analysis_rule("causal_kl.jobs.tables:error_norms", snakemake)  # noqa: F821
