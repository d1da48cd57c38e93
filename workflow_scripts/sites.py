"""Rule sites: corpus rows -> docs.parquet, sites.parquet and one site file per shard."""
from causal_kl.logs import run_script
from causal_kl.stages import stage_sites

run_script(lambda s: stage_sites(s.config, s.output.docs, s.output.sites, list(s.output.shards), s.output.stats), snakemake)  # noqa: F821
