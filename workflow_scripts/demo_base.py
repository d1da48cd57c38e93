"""Rule demo_base (rules/gold.smk): Write the extracted golds as an NLA base.parquet (through bf16), so the demo exercises stored golds."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.gold import demo_base

run_rule(demo_base, snakemake)  # noqa: F821
