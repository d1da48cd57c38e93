"""Golds of route-training documents (rule train_gold)."""
from causal_kl.analysis import setup_logging
from causal_kl.routes.training import write_training_golds

setup_logging(snakemake.log[0])  # noqa: F821
write_training_golds(snakemake.config, tuple(snakemake.params.rows), snakemake.output.gold)  # noqa: F821
