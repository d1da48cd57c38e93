"""Rule conditions (rules/patch.smk): Seeded resample choices, the eval-set mean gold and the noise directions, recorded so reruns are bit-identical."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.patch import conditions

run_rule(conditions, snakemake)  # noqa: F821
