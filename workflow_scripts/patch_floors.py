"""Rule patch_floors (rules/patch.smk): The route-independent conditions (and clean) for one shard."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.patch import patch_floors

run_rule(patch_floors, snakemake)  # noqa: F821
