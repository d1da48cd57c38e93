"""Rule stat_floor_offsets (rules/statistics.smk): §5: the first offset at which each condition is at the gold floor."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.statistics import stat_floor_offsets

run_rule(stat_floor_offsets, snakemake)  # noqa: F821
