"""The `pca` route against numpy's SVD directly."""

import numpy as np
import pytest

from causal_kl.contracts import RECON
from causal_kl.errors import CausalKLError
from causal_kl.io import arrow_to_vectors, read_parquet
from causal_kl.jobs.recon import recon_pca
from run_files import PROVENANCE, base_config, make_run, write_gold


def _job(tmp_path, route, train_docs):
    """The recon_pca rule's job on fixture files, as keyword arguments; the golds and training golds."""
    sites_path, gold_path, sites, gold = make_run(tmp_path, d=20)
    rng = np.random.default_rng(9)
    train = (rng.standard_normal((80, 20)) @ rng.standard_normal((20, 20)) + 2.0).astype(np.float32)
    write_gold(tmp_path / "train.parquet", train, doc_ids=train_docs(80))
    config = base_config(tmp_path, {"p": route})
    job = dict(train_gold=[str(tmp_path / "train.parquet")], sites=str(sites_path), gold=str(gold_path),
               recon=str(tmp_path / "recon.parquet"), route_entry=config["routes"]["p"],
               eval_rows=config["corpus"]["rows"], layer="3", route="p", provenance=PROVENANCE)
    return job, gold, train


@pytest.mark.parametrize("k", [1, 5, 20])
def test_pca_matches_numpy_svd(tmp_path, k):
    job, gold, train = _job(tmp_path, {"kind": "pca", "train_rows": [50, 90], "k": k}, lambda n: [f"c:train:{50 + i // 2}" for i in range(n)])
    recon_pca(**job)
    got = arrow_to_vectors(read_parquet(job["recon"], RECON, 20).column("reconstruction"))
    x = train.astype(np.float64)
    mu = x.mean(0)
    _, _, vt = np.linalg.svd(x - mu)
    expect = mu + (gold - mu) @ vt[:k].T @ vt[:k]
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-4)
    if k == 20:  # the full basis reproduces the golds
        np.testing.assert_allclose(got, gold, atol=1e-4)


def test_pca_refuses_training_on_eval_documents(tmp_path):
    job, _, _ = _job(tmp_path, {"kind": "pca", "train_rows": [50, 90], "k": 3}, lambda n: [f"c:train:{i % 3}" for i in range(n)])
    with pytest.raises(CausalKLError, match="training documents are eval documents"):
        recon_pca(**job)


def test_pca_refuses_overlapping_rows_and_bad_k(tmp_path):
    job, _, _ = _job(tmp_path, {"kind": "pca", "train_rows": [3, 90], "k": 3}, lambda n: [f"c:train:{50 + i}" for i in range(n)])
    with pytest.raises(CausalKLError, match="overlap the eval rows"):
        recon_pca(**job)
    job["route_entry"].update(train_rows=[50, 90], k=500)
    with pytest.raises(CausalKLError) as e:
        recon_pca(**job)
    assert "routes.p" in str(e.value) and "k=500" in str(e.value)
