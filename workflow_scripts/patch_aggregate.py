"""Rule patch_aggregate: every shard of the floors and of every route -> results/{run}/patch.parquet."""
from causal_kl.logs import run_script
from causal_kl.stages import stage_patch_aggregate

run_script(lambda s: stage_patch_aggregate(s.config, list(s.input.floors) + list(s.input.routes), s.output[0]), snakemake)  # noqa: F821
