"""Rule demo_corpus (rules/demo.smk): Python's own documentation packed into documents (``resources/demo/corpus.parquet``)."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.demo import demo_corpus

run_rule(demo_corpus, snakemake)  # noqa: F821
