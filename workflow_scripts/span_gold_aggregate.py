"""Rule span_gold_aggregate (rules/spans.smk): Every span-gold shard -> ``span{k}/gold.parquet`` (empty shards, whose width is unknown, left out)."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.spans import span_gold_aggregate

run_rule(span_gold_aggregate, snakemake)  # noqa: F821
