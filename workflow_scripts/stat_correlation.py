"""Rule stat_correlation (rules/statistics.smk): §3: Spearman ρ of direction-MSE and of clean CE against KL@0."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.statistics import stat_correlation

run_rule(stat_correlation, snakemake)  # noqa: F821
