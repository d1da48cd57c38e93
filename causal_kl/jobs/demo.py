"""Jobs of ``rules/demo.smk``: the offline demo's corpus, tokenizer, tiny Gemma-3 and SAE suite."""

from __future__ import annotations

from causal_kl.demo.corpus import CorpusConfig, build_corpus
from causal_kl.demo.tokenizer import build_tokenizer
from causal_kl.demo.train import DataSplit, ModelConfig, TrainConfig, build_model


def demo_corpus(corpus: str, settings: dict, seed: int) -> None:
    """Python's own documentation packed into documents (``resources/demo/corpus.parquet``)."""
    build_corpus(corpus, CorpusConfig(**settings, seed=seed))


def demo_tokenizer(corpus: str, tokenizer: str, settings: dict, data: dict, column: str) -> None:
    """A byte-level BPE trained on the model-training rows of the demo corpus."""
    build_tokenizer(corpus, tokenizer, vocab_size=settings["vocab_size"], train_rows=(data["train_start"], None),
                    column=column)


def demo_model(corpus: str, tokenizer: str, model: str, training: str, architecture: dict, train: dict, data: dict,
               seed: int, column: str) -> None:
    """A tiny Gemma-3 trained on the demo corpus and scored against count baselines."""
    split = dict(data, eval_rows=tuple(data["eval_rows"]))
    build_model(corpus, tokenizer, model, training, ModelConfig(**architecture), TrainConfig(**train, seed=seed),
                DataSplit(**split, column=column))


def demo_sublayer_sae(train_gold: str, train_gold_in: list[str], sae: str, settings: dict, sublayer: dict, seed: int,
                      layer: str, kind: str) -> None:
    """One of the demo's SAEs inside block ``layer``: a TopK SAE at mlp_out or attn_z, or a skip transcoder from the
    golds at mlp_in (``train_gold_in``) to those at mlp_out (``train_gold``), on the route-training rows (SAELens
    format)."""
    import logging

    import numpy as np

    from causal_kl.demo.sae import SAETrainConfig, write_demo_sae, write_demo_transcoder
    from causal_kl.io import read_gold

    ids, golds = read_gold(train_gold)
    config = SAETrainConfig(**{key: v for key, v in settings.items() if key not in ("train_rows", "k", "sublayer")},
                            k=int(sublayer["k"]), seed=seed)
    name = "causal-kl demo model"
    if kind == "skip_transcoder":
        ids_in, inputs = read_gold(train_gold_in[0])
        at = {int(s): i for i, s in enumerate(ids_in)}
        inputs = inputs[np.asarray([at[int(s)] for s in ids], dtype=np.int64)]  # row for row with the targets
        report = write_demo_transcoder(inputs, golds, sae, int(layer), config, float(sublayer["l1_coefficient"]), name)
    else:
        report = write_demo_sae(golds, sae, int(layer), config, name, hook=kind)
    logging.getLogger(__name__).info(
        "demo %s at block %s: %d golds, d_sae %d, %d steps in %.1f s; explained variance %.3f, L0 %.1f, %.1f%% dead",
        kind, layer, report.n_train, report.d_sae, report.steps, report.seconds, report.explained_variance, report.l0,
        100 * report.dead_share)


def demo_sae(train_gold: str, sae: str, settings: dict, seed: int, layer: str, k: str) -> None:
    """A small TopK SAE with ``k`` active latents trained on the golds of the demo's route-training rows at one layer
    (SAELens format): one of the demo's suite of sparsities."""
    import logging

    from causal_kl.demo.sae import SAETrainConfig, write_demo_sae
    from causal_kl.routes.training import read_training_golds

    _, golds = read_training_golds(train_gold)
    config = SAETrainConfig(**{key: v for key, v in settings.items() if key not in ("train_rows", "k", "sublayer")}, k=int(k),
                            seed=seed)
    report = write_demo_sae(golds, sae, int(layer), config, model_name="causal-kl demo model")
    logging.getLogger(__name__).info(
        "demo SAE at layer %s: %d golds, d_sae %d, k %d, %d steps in %.1f s; explained variance %.3f, L0 %.1f, "
        "%.1f%% dead", layer, report.n_train, report.d_sae, report.k, report.steps, report.seconds,
        report.explained_variance, report.l0, 100 * report.dead_share)
