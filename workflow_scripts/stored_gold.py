"""Rule stored_gold: NLA base.parquet -> stored golds, after the re-extract check."""
from causal_kl.logs import run_script
from causal_kl.stages import stage_stored_gold

run_script(lambda s: stage_stored_gold(s.config, s.input.base, s.input.sites, s.input.gold, s.output.stored,
                                       s.output.reextract, s.output.summary), snakemake)  # noqa: F821
