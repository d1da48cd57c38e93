"""The `text_channel` route and training golds on a tiny Gemma-3 and a fixture corpus.

Training golds are checked against a plain forward (``output_hidden_states[L + 1]``) at the
positions NLA stage 0 samples, the verbaliser against a hand-written logit lens, the
reconstructor against a direct ridge solve, and training documents against the eval ones.
"""

import json

import numpy as np
import pandas as pd
import pytest
import torch

import fixtures
from causal_kl.contracts import EXPLANATIONS, GOLD, RECON
from causal_kl.errors import CausalKLError
from causal_kl.io import arrow_to_vectors, read_parquet, write_parquet
from causal_kl.models import load_model
from causal_kl.jobs.recon import recon_text_channel
from causal_kl.routes.text_channel import TextReconstructor, verbalise
from causal_kl.routes.training import training_golds
from causal_kl.sites import build_sites, sample_doc_positions, special_token_ids
from run_files import PROVENANCE, base_config, write_gold

LAYER = 2
EVAL_ROWS, TRAIN_ROWS = [0, 8], [8, 30]


@pytest.fixture(scope="module")
def setup(gemma3_dir, corpus_path):
    config = base_config(None, {"tc": {"kind": "text_channel", "train_rows": TRAIN_ROWS, "top_k": 4}},
                         model_path=str(gemma3_dir), layer=LAYER)
    config["corpus"].update(path=str(corpus_path), rows=EVAL_ROWS)
    config["sites"].update(positions_per_doc=4, max_length=256, max_sites=100)
    loaded = load_model(gemma3_dir)
    return config, loaded


def test_training_golds_are_sampled_like_eval_sites_and_match_plain_forward(setup):
    config, loaded = setup
    table = training_golds(loaded, config["corpus"], config["sites"], config["seed"], LAYER, tuple(TRAIN_ROWS))
    docs = table.column("doc_id").to_pylist()
    pos = table.column("position").to_pylist()
    golds = arrow_to_vectors(table.column("activation"))
    texts = pd.read_parquet(config["corpus"]["path"])["content"].tolist()
    special = special_token_ids(loaded.tokenizer)
    expect_sites = []
    for row in range(*TRAIN_ROWS):
        doc_id = f"c:train:{row}"
        ids = loaded.tokenizer(texts[row], truncation=True, max_length=256)["input_ids"]
        with torch.no_grad():
            hidden = loaded.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[LAYER + 1][0]
        for p in sample_doc_positions(ids, special, config["seed"], doc_id, 4, config["sites"]["min_position"]):
            expect_sites.append((doc_id, p))
            np.testing.assert_allclose(golds[len(expect_sites) - 1], hidden[p].numpy(), atol=1e-4, rtol=1e-4)
    assert list(zip(docs, pos)) == expect_sites
    eval_docs = set(build_sites(config["corpus"], config["sites"], config["seed"], loaded.tokenizer).sites.column("doc_id").to_pylist())
    assert eval_docs and not (eval_docs & set(docs))


def test_verbaliser_is_the_logit_lens(setup):
    _, loaded = setup
    gold = fixtures.random_vectors(5, loaded.d_model, seed=2) * 3
    texts = verbalise(loaded, gold, top_k=4, batch_size=2)
    m = loaded.model
    with torch.no_grad():
        logits = m.lm_head(m.model.norm(torch.from_numpy(gold)))
        logits = torch.tanh(logits / 30.0) * 30.0
    for text, row in zip(texts, logits.topk(4).indices.tolist()):
        assert json.loads(text) == [loaded.tokenizer.convert_ids_to_tokens(t) for t in row]


def test_reconstructor_is_ridge_on_text_features():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(12)]
    texts = [json.dumps(list(rng.choice(words, 4, replace=False))) for _ in range(30)]
    y = rng.standard_normal((30, 6))
    alpha = 0.7
    model = TextReconstructor.fit(texts, y, alpha)
    # independent: features by hand, ridge with an unpenalised intercept as one least-squares problem
    vocab = sorted(model.vocab, key=model.vocab.get)
    x = np.array([[sum(1 / (r + 1) for r, w in enumerate(json.loads(t)) if w == v) for v in vocab] for t in texts])
    a = np.hstack([x, np.ones((30, 1))])
    a_aug = np.vstack([a, np.hstack([np.sqrt(alpha) * np.eye(len(vocab)), np.zeros((len(vocab), 1))])])
    coef = np.linalg.lstsq(a_aug, np.vstack([y, np.zeros((len(vocab), 6))]), rcond=None)[0]
    np.testing.assert_allclose(model.predict(texts), a @ coef, atol=1e-5)
    assert np.allclose(model.predict(["not json"]), coef[-1], atol=1e-5)  # no text, intercept only


def test_text_channel_route_end_to_end(setup, tmp_path):
    config, loaded = setup
    from causal_kl.gold import extract_golds

    sample = build_sites(config["corpus"], config["sites"], config["seed"], loaded.tokenizer)
    sites = sample.sites
    doc_tokens = dict(zip(sample.docs.column("doc_id").to_pylist(), sample.docs.column("input_ids").to_pylist()))
    gold = extract_golds(loaded, doc_tokens, sites.column("doc_id").to_pylist(), sites.column("position").to_pylist(), LAYER)
    write_parquet(tmp_path / "sites.parquet", sites)
    write_gold(tmp_path / "gold.parquet", gold, layer=LAYER)
    write_parquet(tmp_path / "train.parquet", training_golds(loaded, config["corpus"], config["sites"], config["seed"], LAYER,
                                                             tuple(TRAIN_ROWS)), GOLD, loaded.d_model)
    job = dict(train_gold=[str(tmp_path / "train.parquet")], sites=str(tmp_path / "sites.parquet"),
               gold=str(tmp_path / "gold.parquet"), model_dir=[], recon=str(tmp_path / "recon.parquet"),
               explanations=str(tmp_path / "explanations.parquet"), route_entry=config["routes"]["tc"],
               eval_rows=config["corpus"]["rows"], model=config["model"], model_fingerprint=None, dtype="float32",
               device="cpu", layer=str(LAYER), route="tc",
               provenance=PROVENANCE)
    recon_text_channel(**job)
    ex = read_parquet(job["explanations"], EXPLANATIONS).to_pandas()
    recon = arrow_to_vectors(read_parquet(job["recon"], RECON, loaded.d_model).column("reconstruction"))
    assert ex.site_id.tolist() == sites.column("site_id").to_pylist()
    assert ex.explanation.tolist() == verbalise(loaded, gold, 4)
    # the bottleneck: sites with the same text get the same reconstruction
    for _, idx in ex.groupby("explanation").indices.items():
        np.testing.assert_array_equal(recon[idx], np.repeat(recon[idx[:1]], len(idx), axis=0))
    cos = (recon * gold).sum(1) / np.linalg.norm(recon, axis=1) / np.linalg.norm(gold, axis=1)
    assert np.isfinite(recon).all() and cos.mean() > 0

    job["route_entry"]["train_rows"] = [5, 30]
    with pytest.raises(CausalKLError, match="overlap the eval rows"):
        recon_text_channel(**job)
