"""Rule stat_energy (rules/statistics.smk): §4: damage per unit squared error norm (noise = 1) and the mixture α."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.statistics import stat_energy

run_rule(stat_energy, snakemake)  # noqa: F821
