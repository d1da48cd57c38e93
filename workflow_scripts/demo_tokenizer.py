"""Rule demo_tokenizer (rules/demo.smk): A byte-level BPE trained on the model-training rows of the demo corpus."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.demo import demo_tokenizer

run_rule(demo_tokenizer, snakemake)  # noqa: F821
