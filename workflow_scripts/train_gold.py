"""Rule train_gold: golds of route-training documents."""
from causal_kl.logs import run_script
from causal_kl.routes.training import write_training_golds

run_script(lambda s: write_training_golds(s.config, tuple(s.params.rows), s.output.gold), snakemake)  # noqa: F821
