"""causal_kl.routes.reconstructors: each route's reconstruction of any vector.

On the eval golds a reconstructor must give exactly what the route's recon job wrote (the jobs of
causal_kl/jobs/recon.py run here on the same fixture files as tests/test_routes_*.py), and on
other vectors what an independent computation gives: numpy's SVD for pca, routes.sae.reconstruct
for sae, the file's rows for file, the plain AR (tests/test_routes_nla.py) for nla_ar.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from causal_kl.contracts import RECON
from causal_kl.errors import CausalKLError
from causal_kl.io import arrow_to_vectors, read_parquet
from causal_kl.jobs.recon import recon_pca, recon_text_channel
from causal_kl.routes import sae as sae_route
from causal_kl.routes.reconstructors import Reconstructor, build_reconstructor
from run_files import PROVENANCE, base_config, make_run, pca_job, write_gold
from test_routes_nla import D, EXPLANATIONS_TEXT, ar_dir, plain_ar  # noqa: F401 (ar_dir: a fixture)
from test_sae import random_tensors, write_case


def _recon(path, d):
    return arrow_to_vectors(read_parquet(path, RECON, d).column("reconstruction"))


def _eval_docs(sites_path):
    return set(read_parquet(sites_path).column("doc_id").to_pylist())


# ------------------------------------------------------------------------------------- pca
@pytest.mark.parametrize("k,center", [(3, True), (7, False)])
def test_pca_equals_the_job_and_numpy_svd(tmp_path, k, center):
    job, gold, train = pca_job(tmp_path, {"kind": "pca", "train_rows": [50, 90], "k": k, "center": center},
                                lambda n: [f"c:train:{50 + i // 2}" for i in range(n)], layer=2)
    recon_pca(**job)
    r = build_reconstructor(job["route_entry"], 2, route="p", d_model=20, train_gold=job["train_gold"][0],
                            eval_doc_ids=_eval_docs(job["sites"]))
    assert r.available and not r.needs_where and r.missing([("c:train:0", 3)]) == []
    np.testing.assert_array_equal(r(gold), _recon(job["recon"], 20))  # what the job wrote, bit for bit
    other = np.random.default_rng(5).normal(2, 3, (9, 20)).astype(np.float32)  # vectors at any other position
    x = train.astype(np.float64)
    mu = x.mean(0) if center else np.zeros(20)
    vt = np.linalg.svd(x - mu)[2][:k]
    for v in (gold, other):
        np.testing.assert_allclose(r(v), mu + (v - mu) @ vt.T @ vt, rtol=1e-4, atol=1e-4)
    assert r(other[:0]).shape == (0, 20)


def test_pca_refuses_eval_documents_and_needs_training_golds(tmp_path):
    job, _, _ = pca_job(tmp_path, {"kind": "pca", "train_rows": [50, 90], "k": 3}, lambda n: [f"c:train:{i % 3}" for i in range(n)], layer=2)
    with pytest.raises(CausalKLError, match="training documents are eval documents"):
        build_reconstructor(job["route_entry"], 2, route="p", d_model=20, train_gold=job["train_gold"][0],
                            eval_doc_ids=_eval_docs(job["sites"]))
    with pytest.raises(CausalKLError, match="routes.p.*train_gold"):
        build_reconstructor(job["route_entry"], 2, route="p", d_model=20)
    with pytest.raises(CausalKLError, match="model width 21"):
        build_reconstructor(job["route_entry"], 2, route="p", d_model=21, train_gold=job["train_gold"][0])
    # a width not known (0, e.g. a span with no eligible site) checks nothing
    assert build_reconstructor(job["route_entry"], 2, route="p", d_model=0, train_gold=job["train_gold"][0]).available


# ---------------------------------------------------------------------------- text_channel
def test_text_channel_equals_the_job_bit_for_bit(gemma3_dir, tmp_path):
    from causal_kl.jobs.gold import load_run_model
    from causal_kl.routes import text_channel

    sites_path, gold_path, _, gold = make_run(tmp_path, n_docs=4, per_doc=4, d=64)
    rng = np.random.default_rng(3)
    train = (gold.mean(0) + rng.standard_normal((60, 64)) * 1.5).astype(np.float32)
    write_gold(tmp_path / "train.parquet", train, doc_ids=[f"c:train:{50 + i // 3}" for i in range(60)])
    config = base_config(tmp_path, {"tc": {"kind": "text_channel", "train_rows": [50, 90], "top_k": 4, "ridge_alpha": 0.5}},
                         model_path=str(gemma3_dir), layer=2)
    entry = config["routes"]["tc"]
    recon_text_channel(train_gold=[str(tmp_path / "train.parquet")], sites=str(sites_path), gold=str(gold_path), model_dir=[],
                       recon=str(tmp_path / "recon.parquet"), explanations=str(tmp_path / "ex.parquet"), route_entry=entry,
                       eval_rows=config["corpus"]["rows"], model=config["model"], model_fingerprint=None, dtype="float32",
                       device="cpu", layer="2", route="tc", provenance=PROVENANCE)
    loaded = load_run_model(config["model"], "float32", "cpu", with_tokenizer=True)
    r = build_reconstructor(entry, 2, route="tc", d_model=64, train_gold=str(tmp_path / "train.parquet"),
                            eval_doc_ids=_eval_docs(sites_path), loaded=loaded)
    assert r.available and not r.needs_where
    np.testing.assert_array_equal(r(gold), _recon(tmp_path / "recon.parquet", 64))
    other = (gold.mean(0) + rng.standard_normal((7, 64)) * 2).astype(np.float32)
    np.testing.assert_array_equal(r(other), text_channel.reconstruct(loaded, train, other, 4, 0.5)[1])
    with pytest.raises(CausalKLError, match="loaded="):
        build_reconstructor(entry, 2, route="tc", d_model=64, train_gold=str(tmp_path / "train.parquet"))


# ------------------------------------------------------------------------------------- sae
def test_sae_equals_the_sae_route(tmp_path):
    tensors = random_tensors()
    path = write_case(tmp_path, tensors, "topk", True, "layer_norm")
    entry = {"kind": "sae", "path": str(path), "format": "auto", "check_hook": True, "batch_size": 5}
    golds = np.random.default_rng(2).normal(1, 2, (23, 12)).astype(np.float32)
    r = build_reconstructor(entry, 2, route="s", d_model=12)
    assert r.available and not r.needs_where
    np.testing.assert_array_equal(r(golds), sae_route.reconstruct(entry, 2, golds, "cpu", "config routes.s")[0])
    with pytest.raises(CausalKLError, match="d_in"):
        build_reconstructor(entry, 2, route="s", d_model=13)
    with pytest.raises(CausalKLError, match="check_hook"):
        build_reconstructor(entry, 3, route="s", d_model=12)


# ------------------------------------------------------------------------------------ file
def _keyed_file(tmp_path, key="position", name="vectors_L2.parquet"):
    """A reconstruction file keyed by doc_id + position (or n_raw_tokens) at the sites and two positions after each."""
    _, _, sites, _ = make_run(tmp_path)
    s = sites.to_pandas()
    rows = [(doc, pos + j) for doc, pos in zip(s.doc_id, s.position) for j in range(3)]
    vectors = np.random.default_rng(1).standard_normal((len(rows), 16)).astype(np.float32)
    order = np.random.default_rng(2).permutation(len(rows))  # any row order
    df = pd.DataFrame({"doc_id": [rows[i][0] for i in order],
                       key: [rows[i][1] + (key == "n_raw_tokens") for i in order],
                       "reconstruction": [vectors[i].tolist() for i in order]})
    df.to_parquet(tmp_path / name)
    return rows, vectors


@pytest.mark.parametrize("key", ["position", "n_raw_tokens"])
def test_file_looks_up_doc_and_position(tmp_path, key):
    rows, vectors = _keyed_file(tmp_path, key)
    entry = {"kind": "file", "path": str(tmp_path / "vectors_L{layer}.parquet"), "format": "auto", "column": "reconstruction"}
    r = build_reconstructor(entry, 2, route="f", d_model=16)
    assert r.available and r.needs_where
    pick = [7, 0, 30, 89, 3]
    where = [rows[i] for i in pick]
    np.testing.assert_array_equal(r(np.zeros((5, 16), np.float32), where), vectors[pick])
    absent = [(rows[0][0], 10_000), ("c:train:nowhere", 51)]
    assert r.missing(where + absent) == absent and r.missing(where) == []
    with pytest.raises(CausalKLError) as e:
        r(np.zeros((7, 16), np.float32), where + absent)
    assert "2 of 7 positions have no row" in str(e.value) and "doc_id + position" in str(e.value)
    with pytest.raises(ValueError, match="where"):
        r(np.zeros((5, 16), np.float32))
    with pytest.raises(CausalKLError, match="model width 17"):
        build_reconstructor(entry, 2, route="f", d_model=17)
    np.testing.assert_array_equal(build_reconstructor(entry, 2, route="f", d_model=0)(np.zeros((5, 16)), where), vectors[pick])


def test_site_keyed_files_have_a_reason(tmp_path):
    _, _, sites, gold = make_run(tmp_path)
    pd.DataFrame({"site_id": sites.column("site_id").to_pylist(), "reconstruction": gold.tolist()}).to_parquet(tmp_path / "r.parquet")
    np.save(tmp_path / "r.npy", gold)
    np.save(tmp_path / "r.site_ids.npy", np.arange(len(gold)))
    for path in ("r.parquet", "r.npy"):
        r = build_reconstructor({"kind": "file", "path": str(tmp_path / path)}, 2, route="f", d_model=16)
        assert not r.available and "site_id" in r.reason and "doc_id + position" in r.fix
        assert r.missing([("c:train:0", 50)]) == []
        with pytest.raises(CausalKLError) as e:
            r(gold)
        assert "routes.f" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(CausalKLError, match="not found"):
        build_reconstructor({"kind": "file", "path": str(tmp_path / "none.parquet")}, 2, route="f", d_model=16)


# ---------------------------------------------------------------------------------- nla_ar
def test_nla_ar_looks_up_explanations_and_runs_the_ar(gemma3_dir, ar_dir, tmp_path):  # noqa: F811
    where = [("c:train:0", 50), ("c:train:0", 51), ("c:train:1", 77), ("c:train:1", 50)]
    texts = [EXPLANATIONS_TEXT[i % len(EXPLANATIONS_TEXT)] for i in range(len(where))]
    pd.DataFrame({"doc_id": [w[0] for w in where], "n_raw_tokens": [w[1] + 1 for w in where],
                  "explanation": texts}).iloc[::-1].to_parquet(tmp_path / "ex.parquet")
    entry = {"kind": "nla_ar", "checkpoint": str(ar_dir), "explanations": str(tmp_path / "ex.parquet"), "batch_size": 3}
    r = build_reconstructor(entry, 2, route="ar", d_model=D)
    assert r.available and r.needs_where
    order = [2, 0, 3, 1]
    got = r(np.zeros((4, D), np.float32), [where[i] for i in order])
    np.testing.assert_allclose(got, plain_ar(gemma3_dir, ar_dir, [texts[i] for i in order]), atol=1e-4, rtol=1e-4)
    assert r.missing([("c:train:0", 52)]) == [("c:train:0", 52)]

    pd.DataFrame({"site_id": [0, 1], "explanation": texts[:2]}).to_parquet(tmp_path / "by_site.parquet")
    r = build_reconstructor({**entry, "explanations": str(tmp_path / "by_site.parquet")}, 2, route="ar", d_model=D)
    assert not r.available and "site_id" in r.reason and "doc_id + position" in r.fix


# ---------------------------------------------------------------------------------- nla_av
def test_nla_av_has_a_reason():
    r = build_reconstructor({"kind": "nla_av", "checkpoint": "av", "ar_checkpoint": "ar"}, 2, route="av", d_model=D)
    assert isinstance(r, Reconstructor) and not r.available and not r.needs_where
    assert "AV generation" in r.reason and "file route" in r.fix and r.missing([("d", 1)]) == []
    with pytest.raises(CausalKLError) as e:
        r(np.zeros((1, D), np.float32))
    assert "routes.av" in str(e.value) and "Fix:" in str(e.value)
    with pytest.raises(CausalKLError, match="unknown route kind"):
        build_reconstructor({"kind": "banana"}, 2, route="b", d_model=D)
