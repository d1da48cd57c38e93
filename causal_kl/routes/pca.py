"""Route kind ``pca``: projection onto the top-k principal directions of training golds.

Fit on golds of training documents disjoint from the eval documents (``train_rows``):
mean ``mu [d]`` and the top-``k`` right singular vectors ``V [k, d]`` of the centred training
golds. The reconstruction of a gold ``g`` is ``mu + (g - mu) V^T V``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from causal_kl.errors import CausalKLError


@dataclass
class PCABasis:
    mean: np.ndarray  # [d]
    components: np.ndarray  # [k, d], orthonormal rows
    explained_variance_ratio: np.ndarray  # [k]


def fit_pca(train: np.ndarray, k: int, center: bool = True, source: str = "config routes") -> PCABasis:
    """Top-``k`` principal directions of ``train [m, d]`` (float64 SVD)."""
    x = np.asarray(train, dtype=np.float64)
    m, d = x.shape
    if not 1 <= k <= min(m, d):
        raise CausalKLError(source, "k", f"k={k} is out of range for {m} training golds of width {d}",
                            f"set k between 1 and {min(m, d)}")
    mean = x.mean(axis=0) if center else np.zeros(d)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    var = s ** 2
    return PCABasis(mean=mean, components=vt[:k], explained_variance_ratio=var[:k] / var.sum())


def project(basis: PCABasis, gold: np.ndarray) -> np.ndarray:
    """``gold [n, d]`` -> its projection ``[n, d]`` (float32) onto the basis, mean added back."""
    centred = np.asarray(gold, dtype=np.float64) - basis.mean
    return (basis.mean + centred @ basis.components.T @ basis.components).astype(np.float32)
