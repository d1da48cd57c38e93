"""Rule demo_sae (rules/demo.smk): A small TopK SAE trained on the golds of the demo's route-training rows at one layer (SAELens format)."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.demo import demo_sae

run_rule(demo_sae, snakemake)  # noqa: F821
