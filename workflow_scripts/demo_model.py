"""The demo model (rule demo_model): a tiny Gemma-3 trained on the corpus, scored against count baselines."""
import logging
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # threads sleep when they wait: shared CPUs stay fast

from causal_kl.demo.train import DataSplit, ModelConfig, TrainConfig, build_model

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, force=True,  # noqa: F821
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
logging.captureWarnings(True)
params = snakemake.params  # noqa: F821
data = dict(params.data)
data["eval_rows"] = tuple(data["eval_rows"])
build_model(snakemake.input.corpus, snakemake.input.tokenizer,  # noqa: F821
            snakemake.output.model, snakemake.output.training,  # noqa: F821
            ModelConfig(**params.model), TrainConfig(**params.train, seed=params.seed),
            DataSplit(**data, column=params.column))
