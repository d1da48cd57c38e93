"""Rule gold: block-L output at each site of one shard."""
from causal_kl.logs import run_script
from causal_kl.stages import stage_gold_shard

run_script(lambda s: stage_gold_shard(s.config, s.input.sites, s.input.docs, s.output[0]), snakemake)  # noqa: F821
