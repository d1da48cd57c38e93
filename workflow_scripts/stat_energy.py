"""Rule stat_energy (rules/statistics.smk): §4: damage per unit squared error norm (noise = 1) and the mixture α."""
from causal_kl.jobs import run_analysis_rule

run_analysis_rule("causal_kl.jobs.statistics:stat_energy", snakemake)  # noqa: F821
