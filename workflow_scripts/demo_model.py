"""The demo model (rule demo_model): a tiny Gemma-3 trained on the corpus, scored against count baselines."""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # threads sleep when they wait: shared CPUs stay fast

from causal_kl.demo.train import DataSplit, ModelConfig, TrainConfig, build_model  # noqa: E402
from causal_kl.logs import run_script  # noqa: E402


def main(s):
    p = s.params
    data = dict(p.data)
    data["eval_rows"] = tuple(data["eval_rows"])
    build_model(s.input.corpus, s.input.tokenizer, s.output.model, s.output.training,
                ModelConfig(**p.model), TrainConfig(**p.train, seed=p.seed), DataSplit(**data, column=p.column))


run_script(main, snakemake)  # noqa: F821
