"""Rule span_gold (rules/spans.smk): Block-L output at the extra positions p+1 .. p+k-1 of every span of one shard that fits its document."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.spans import span_gold

run_rule(span_gold, snakemake)  # noqa: F821
