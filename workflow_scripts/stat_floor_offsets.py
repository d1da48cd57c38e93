"""Rule stat_floor_offsets (rules/statistics.smk): §5: the first offset at which each condition is at the gold floor."""
from causal_kl.jobs import run_analysis_rule

run_analysis_rule("causal_kl.jobs.statistics:stat_floor_offsets", snakemake)  # noqa: F821
