"""The offline demo assets: corpus, tokenizer, training determinism, count baselines.

Baselines are checked against a hand computation with plain dictionaries; the training
run is a few steps of a tiny Gemma-3, repeated to prove two builds give the same weights.
"""

from __future__ import annotations

import json
import math
import socket
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch

import fixtures
from causal_kl.demo import corpus as demo_corpus
from causal_kl.demo.tokenizer import build_tokenizer, train_tokenizer
from causal_kl.demo.train import (DataSplit, ModelConfig, TrainConfig, baseline_losses, bigram_loss, build_model,
                                  fit_counts, lr_at, tune_lambda, unigram_loss)
from causal_kl.errors import CausalKLError
from causal_kl.models import load_model

SMALL_CORPUS = demo_corpus.CorpusConfig(target_chars=400, max_chars=1000, min_docs=300)


@pytest.fixture(scope="module")
def built_corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("demo") / "corpus.parquet"
    demo_corpus.build_corpus(path, SMALL_CORPUS)
    return path


# ------------------------------------------------------------------ corpus


def test_corpus_columns_rows_and_sources(built_corpus):
    df = pd.read_parquet(built_corpus)
    assert list(df.columns) == ["content"]
    assert len(df) >= 300  # eval 0-50, routes 50-250, model training 250+
    assert df["content"].str.len().min() >= SMALL_CORPUS.target_chars
    assert df["content"].str.len().max() <= SMALL_CORPUS.max_chars + SMALL_CORPUS.target_chars
    text = "\n".join(df["content"])
    # a pydoc topic and a stdlib docstring, both shipped with Python itself
    from pydoc_data.topics import topics
    assert topics["assert"].strip()[:200] in text
    assert "json.dumps\nSerialize ``obj`` to a JSON formatted ``str``." in text


def test_corpus_is_deterministic_and_offline(built_corpus, tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the demo corpus must not use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    again = tmp_path / "again.parquet"
    demo_corpus.build_corpus(again, SMALL_CORPUS)
    assert pd.read_parquet(again)["content"].tolist() == pd.read_parquet(built_corpus)["content"].tolist()
    other_seed = demo_corpus.build_corpus_texts(demo_corpus.CorpusConfig(**{**SMALL_CORPUS.__dict__, "seed": 1}))
    assert sorted(other_seed) == sorted(pd.read_parquet(built_corpus)["content"])  # same documents, other order


def test_pack_documents_against_hand_packing():
    texts = ["a" * 5, "b" * 3, "c" * 12, "d" * 2, "e" * 1]
    # joined lengths: 5, then 5+2+3=10 >= 10 closes; 12 closes; 2, then 2+2+1=5 < 10 is dropped
    assert demo_corpus.pack_documents(texts, target_chars=10, max_chars=20) == [
        "aaaaa\n\nbbb", "c" * 12]
    assert demo_corpus.split_long("x" * 5 + "\n\n" + "y" * 5 + "\n\n" + "z" * 3, max_chars=10) == [
        "xxxxx", "yyyyy\n\nzzz"]
    assert demo_corpus.split_long("x" * 25, max_chars=10) == ["x" * 10, "x" * 10, "x" * 5]


def test_too_few_documents_is_a_one_line_error():
    with pytest.raises(CausalKLError, match="demo.corpus.target_chars.*Fix"):
        demo_corpus.build_corpus_texts(demo_corpus.CorpusConfig(target_chars=10**7, max_chars=10**7))


# ------------------------------------------------------------------ tokenizer


def test_tokenizer_specials_and_bos(tmp_path):
    from transformers import AutoTokenizer

    tok = train_tokenizer(fixtures.make_texts(40), vocab_size=600)
    tok.save_pretrained(tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.convert_ids_to_tokens([0, 1, 2, 3]) == ["<pad>", "<eos>", "<bos>", "<unk>"]
    text = "The model reads a state."
    with_specials = tok(text)["input_ids"]
    without = tok(text, add_special_tokens=False)["input_ids"]
    assert with_specials == [2] + without
    assert tok.decode(without) == text  # byte-level: lossless
    assert len(tok) <= 600  # the fixture text saturates the merges below 600


def test_build_tokenizer_reads_only_training_rows(built_corpus, tmp_path):
    n = build_tokenizer(built_corpus, tmp_path / "tok", vocab_size=512, train_rows=(250, None))
    assert n == 512 and (tmp_path / "tok" / "tokenizer.json").exists()
    with pytest.raises(CausalKLError, match="rows"):
        build_tokenizer(built_corpus, tmp_path / "tok2", vocab_size=512, train_rows=(10**6, None))


# ------------------------------------------------------------------ count baselines


def _hand_bigram_loss(train, heldout, vocab, lam):
    """Plain-dictionary interpolated bigram with an add-one unigram, as written in the docstring."""
    uni, pairs, ctx = Counter(), Counter(), Counter()
    for seq in train:
        for a, b in zip(seq, seq[1:]):
            uni[b] += 1
            pairs[a, b] += 1
            ctx[a] += 1
    n = sum(uni.values())
    nll, count = 0.0, 0
    for seq in heldout:
        for a, b in zip(seq, seq[1:]):
            p_uni = (uni[b] + 1) / (n + vocab)
            p = lam * pairs[a, b] / ctx[a] + (1 - lam) * p_uni if ctx[a] else p_uni
            nll -= math.log(p)
            count += 1
    return nll / count


def test_baselines_against_hand_computation():
    vocab = 6
    train = [[2, 4, 5, 4, 5, 3], [2, 4, 4, 5]]
    heldout = [[2, 4, 5, 0], [1, 5, 4]]  # context 1 never seen: unigram only; target 0 never seen: add-one
    counts = fit_counts(train, vocab)
    # unigram: targets 4 5 4 5 3 4 4 5 -> c(4)=4 c(5)=3 c(3)=1, N=8
    p = {t: (c + 1) / (8 + vocab) for t, c in {0: 0, 3: 1, 4: 4, 5: 3}.items()}
    expect_uni = -(math.log(p[4]) + math.log(p[5]) + math.log(p[0]) + math.log(p[5]) + math.log(p[4])) / 5
    assert unigram_loss(counts, heldout) == pytest.approx(expect_uni, rel=1e-12)
    for lam in (0.0, 0.3, 0.9):
        assert bigram_loss(counts, heldout, lam) == pytest.approx(_hand_bigram_loss(train, heldout, vocab, lam), rel=1e-12)
    # the tuned weight is the grid's argmin on the tuning split, found by brute force
    grid = [0.1, 0.5, 0.9]
    best = min(grid, key=lambda lam: _hand_bigram_loss(train[:1], train[1:], vocab, lam))
    assert tune_lambda(train[:1], train[1:], vocab, grid) == best


def test_baseline_losses_tune_on_training_split_only():
    vocab = 6
    train = [[2, 4, 5, 4, 5, 3], [2, 4, 4, 5], [2, 5, 4, 5, 4], [2, 3, 4, 5]]
    heldout = [[2, 4, 5, 0]]
    out = baseline_losses(train, heldout, vocab, tune_fraction=0.25)
    lam = tune_lambda(train[:3], train[3:], vocab)
    assert out["bigram_lambda"] == lam
    assert out["bigram"] == pytest.approx(_hand_bigram_loss(train, heldout, vocab, lam), rel=1e-12)
    assert out["uniform"] == pytest.approx(math.log(vocab))


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(steps=110, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine
    assert lr_at(110, cfg) == pytest.approx(0.1)


# ------------------------------------------------------------------ training


TINY_MODEL = ModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=6, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=16, sliding_window=16, max_position_embeddings=256)
TINY_TRAIN = TrainConfig(steps=3, batch_size=2, seq_len=64, warmup_steps=1, log_every=1)
TINY_DATA = DataSplit(eval_rows=(0, 5), train_start=250, eval_max_length=64)


def test_training_is_deterministic_and_loads_like_a_real_model(built_corpus, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, Gemma3ForCausalLM

    build_tokenizer(built_corpus, tmp_path / "tok", vocab_size=512)
    records = []
    for run in ("a", "b"):
        records.append(build_model(built_corpus, tmp_path / "tok", tmp_path / run / "model", tmp_path / run / "training.json",
                                   TINY_MODEL, TINY_TRAIN, TINY_DATA))
    wa = load_file(tmp_path / "a" / "model" / "model.safetensors")
    wb = load_file(tmp_path / "b" / "model" / "model.safetensors")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    torch.manual_seed(TINY_TRAIN.seed)  # the seeded initial weights: training moved them
    init = Gemma3ForCausalLM(AutoModelForCausalLM.from_pretrained(tmp_path / "a" / "model").config)
    assert not torch.equal(init.model.layers[0].mlp.up_proj.weight, wa["model.layers.0.mlp.up_proj.weight"])

    loaded = load_model(tmp_path / "a" / "model")
    assert loaded.architecture == "Gemma3ForCausalLM" and loaded.n_layers == 6
    assert loaded.final_logit_softcapping == 30.0 and loaded.sliding_window == 16
    assert "sliding_attention" in loaded.layer_types and "full_attention" in loaded.layer_types
    assert loaded.tokenizer("hello")["input_ids"][0] == loaded.tokenizer.bos_token_id == 2

    rec = json.loads((tmp_path / "a" / "training.json").read_text())
    assert rec["steps"] == 3 and rec["tokens_seen"] == 3 * 2 * 64
    assert rec["parameters"] == sum(p.numel() for p in loaded.model.parameters())
    assert set(rec["heldout_loss"]) >= {"model", "bigram", "unigram", "bigram_lambda"}
    assert rec["heldout_loss"]["model"] == records[1]["heldout_loss"]["model"]

    # the recorded held-out loss is the plain HF forward's mean next-token cross-entropy
    from causal_kl.demo.tokenizer import read_rows

    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "a" / "model").eval()
    nll, n = 0.0, 0
    for text in read_rows(built_corpus, (0, 5)):
        ids = loaded.tokenizer(text, truncation=True, max_length=64, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = hf(input_ids=ids).logits[0, :-1]
        nll += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
        n += ids.shape[1] - 1
    assert rec["heldout_loss"]["model"] == pytest.approx(nll / n, rel=1e-5)
