"""Rule patch_floors (rules/patch.smk): The route-independent conditions (and clean) for one shard."""
from causal_kl.jobs import run_model_rule

run_model_rule("causal_kl.jobs.patch:patch_floors", snakemake)  # noqa: F821
