"""Rule span_gold (rules/spans.smk): Block-L output at the extra positions p+1 .. p+k-1 of every span of one shard that fits its document."""
from causal_kl.jobs import run_model_rule

run_model_rule("causal_kl.jobs.spans:span_gold", snakemake)  # noqa: F821
