"""Rule stat_correlation (rules/statistics.smk): §3: Spearman ρ of direction-MSE and of clean CE against KL@0."""
from causal_kl.jobs import run_analysis_rule

run_analysis_rule("causal_kl.jobs.statistics:stat_correlation", snakemake)  # noqa: F821
