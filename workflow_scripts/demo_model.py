"""Rule demo_model (rules/demo.smk): A tiny Gemma-3 trained on the demo corpus and scored against count baselines."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.demo import demo_model

run_rule(demo_model, snakemake)  # noqa: F821
