"""Rule patch_floors: the route-independent conditions (and clean) for one shard."""
from causal_kl.logs import run_script
from causal_kl.stages import stage_patch_floors

run_script(lambda s: stage_patch_floors(s.config, s.input.sites, s.input.docs, s.input.gold, s.input.choices,
                                        s.input.mean, s.output[0]), snakemake)  # noqa: F821
