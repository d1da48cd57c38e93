"""Aggregate per-shard parquet files of one contract into one file."""
from causal_kl.logs import run_script
from causal_kl.stages import stage_concat

run_script(lambda s: stage_concat(s.config, list(s.input), s.output[0], s.params.contract), snakemake)  # noqa: F821
