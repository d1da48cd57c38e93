"""Rule sites (rules/sites.smk): Corpus rows -> ``docs.parquet``, ``sites.parquet`` and one site file per shard (NLA stage 0)."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.sites import sites

run_rule(sites, snakemake)  # noqa: F821
