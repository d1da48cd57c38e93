"""Rule demo_base: write the extracted golds as an NLA base.parquet (the demo's stored golds)."""
from causal_kl.logs import run_script
from causal_kl.stages import stage_demo_base

run_script(lambda s: stage_demo_base(s.config, s.input.gold, s.input.sites, s.input.docs, s.output[0]), snakemake)  # noqa: F821
