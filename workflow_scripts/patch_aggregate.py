"""Rule patch_aggregate (rules/patch.smk): the floors and every route of every span of a layer -> ``results/{run}/L{layer}/patch.json``, the layer's patch dataset."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.patch import patch_aggregate

run_rule(patch_aggregate, snakemake)  # noqa: F821
