"""The `pca` route against numpy's SVD directly."""

import numpy as np
import pytest

from causal_kl.contracts import RECON
from causal_kl.errors import CausalKLError
from causal_kl.io import arrow_to_vectors, read_parquet
from causal_kl.jobs.recon import recon_pca
from run_files import pca_job


@pytest.mark.parametrize("k", [1, 5, 20])
def test_pca_matches_numpy_svd(tmp_path, k):
    job, gold, train = pca_job(tmp_path, {"kind": "pca", "train_rows": [50, 90], "k": k}, lambda n: [f"c:train:{50 + i // 2}" for i in range(n)])
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
    job, _, _ = pca_job(tmp_path, {"kind": "pca", "train_rows": [50, 90], "k": 3}, lambda n: [f"c:train:{i % 3}" for i in range(n)])
    with pytest.raises(CausalKLError, match="training documents are eval documents"):
        recon_pca(**job)


def test_pca_refuses_overlapping_rows_and_bad_k(tmp_path):
    job, _, _ = pca_job(tmp_path, {"kind": "pca", "train_rows": [3, 90], "k": 3}, lambda n: [f"c:train:{50 + i}" for i in range(n)])
    with pytest.raises(CausalKLError, match="overlap the eval rows"):
        recon_pca(**job)
    job["route_entry"].update(train_rows=[50, 90], k=500)
    with pytest.raises(CausalKLError) as e:
        recon_pca(**job)
    assert "routes.p" in str(e.value) and "k=500" in str(e.value)
