"""Rule demo_sublayer_sae (rules/demo.smk): one of the demo's SAEs inside a block (a TopK SAE at mlp_out or attn_z, or a skip transcoder mlp_in -> mlp_out; SAELens format)."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.demo import demo_sublayer_sae

run_rule(demo_sublayer_sae, snakemake)  # noqa: F821
