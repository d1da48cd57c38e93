"""The nine conditions: their names (the API), how they are grouped and shown, and the vector each one places at (L, p).

| condition | vector |
|---|---|
| clean | nothing patched |
| gold | the stored gold, re-read from disk |
| recon_goldnorm | r / ||r|| * ||g|| |
| recon_rawnorm | r as produced |
| noise_matched | g + e * u; u a uniform unit vector seeded by (seed, site_id); e = ||recon_goldnorm - g|| |
| resample_same_doc | the gold of another site of the same document (seeded); none if no sibling |
| resample_cross_doc | the gold of a site of another document (seeded) |
| zero | the zero vector |
| mean | the mean gold over the eval set |

This module is the one home of the condition vocabulary: no other module spells a condition's
name; they import the constants below. Every random choice is a pure function of
(seed, site_id), so reruns are bit-identical.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa

from causal_kl.errors import CausalKLError


CLEAN = "clean"
GOLD = "gold"
RECON = "recon_goldnorm"
RECON_RAW = "recon_rawnorm"
NOISE = "noise_matched"
SAME_DOC = "resample_same_doc"
CROSS_DOC = "resample_cross_doc"
ZERO = "zero"
MEAN = "mean"

CONDITIONS = (CLEAN, GOLD, RECON, RECON_RAW, NOISE, SAME_DOC, CROSS_DOC, ZERO, MEAN)
"""The nine conditions of the design card, in its order; their names are the API."""

FLOOR_CONDITIONS = (GOLD, SAME_DOC, CROSS_DOC, ZERO, MEAN)
"""Route-independent conditions: computed once per run ("floors") and shared by every route."""

ROUTE_CONDITIONS = (RECON, RECON_RAW, NOISE)
"""Conditions computed per route."""

MEASURED = tuple(c for c in CONDITIONS if c != CLEAN)
"""The eight patched conditions."""

TABLE_ORDER = (GOLD, RECON, RECON_RAW, NOISE, SAME_DOC, CROSS_DOC, ZERO, MEAN)
"""The write-up's table order (floors and route conditions mixed)."""

LOSS_FLOORS = (CROSS_DOC, SAME_DOC, ZERO, MEAN)
"""Floors that loss recovered is reported against; the first is the headline."""

HEADLINE_FLOOR = LOSS_FLOORS[0]

ERROR_FLOORS = (SAME_DOC, CROSS_DOC, ZERO, MEAN)
"""Route-independent conditions whose error norm ``‖v − g‖`` is computed once per run."""

RESAMPLES = (SAME_DOC, CROSS_DOC)
"""The on-manifold "content removed" floors (the mixture-α anchors)."""

ENERGY_CONDITIONS = (NOISE, RECON, RECON_RAW, SAME_DOC, CROSS_DOC, ZERO, MEAN)
"""Conditions whose damage per unit squared error norm is reported (noise first: it is the unit)."""

LABELS = {
    CLEAN: "clean",
    GOLD: "gold repatch (floor)",
    RECON: "reconstruction (gold norm)",
    RECON_RAW: "reconstruction (raw norm)",
    NOISE: "matched-MSE noise",
    SAME_DOC: "resample, same doc",
    CROSS_DOC: "resample, cross-doc",
    ZERO: "zero ablation",
    MEAN: "mean ablation",
}
"""Human names of the conditions, as the write-up prints them."""

RESAMPLE_SOURCE_COLUMNS = {SAME_DOC: "same_doc_source", CROSS_DOC: "cross_doc_source"}
"""The ``CONDITION_CHOICES`` column recording each resample's source site."""


def _site_rng(seed: int, tag: str, site_id: int) -> random.Random:
    return random.Random(hashlib.sha256(f"{seed}|{tag}|{int(site_id)}".encode()).digest())


def resample_choices(site_ids: Sequence[int], doc_ids: Sequence[str], seed: int) -> pa.Table:
    """Seeded resample sources per site: ``same_doc_source`` (-1 if no sibling), ``cross_doc_source``."""
    site_ids = [int(s) for s in site_ids]
    by_doc: dict[str, list[int]] = {}
    for s, d in zip(site_ids, doc_ids):
        by_doc.setdefault(d, []).append(s)
    if len(by_doc) < 2:
        raise CausalKLError("sites.parquet", "doc_id", "all sites come from one document, so there is no cross-document resample",
                            "sample sites from at least two documents (widen corpus.rows)")
    order = sorted(site_ids)
    same, cross = [], []
    for s, d in zip(site_ids, doc_ids):
        sibs = [x for x in by_doc[d] if x != s]
        own = set(by_doc[d])
        same.append(_site_rng(seed, SAME_DOC, s).choice(sorted(sibs)) if sibs else -1)
        rng = _site_rng(seed, CROSS_DOC, s)
        # rejection sampling over the sorted pool: same law as choice(others), no O(n) list per site
        while True:
            c = order[rng.randrange(len(order))]
            if c not in own:
                break
        cross.append(c)
    return pa.table({
        "site_id": pa.array(site_ids, pa.int64()),
        "same_doc_source": pa.array(same, pa.int64()),
        "cross_doc_source": pa.array(cross, pa.int64()),
    })


def noise_directions(site_ids: Sequence[int], d: int, seed: int) -> np.ndarray:
    """Uniform random unit vectors, one per site, each seeded by (seed, site_id): ``[n, d]`` float64."""
    out = np.empty((len(site_ids), d), dtype=np.float64)
    for i, s in enumerate(site_ids):
        g = np.random.default_rng([int(seed), int(s), 0x6E6F6973])  # "nois"
        v = g.standard_normal(d)
        out[i] = v / np.linalg.norm(v)
    return out


def goldnorm(recon: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """``r / ||r|| * ||g||`` per row (float64); a zero reconstruction stays zero."""
    r = recon.astype(np.float64)
    g = gold.astype(np.float64)
    rn = np.linalg.norm(r, axis=1, keepdims=True)
    return np.where(rn > 0, r / np.maximum(rn, 1e-300), 0.0) * np.linalg.norm(g, axis=1, keepdims=True)


def route_vectors(gold: np.ndarray, recon: np.ndarray, site_ids: Sequence[int], seed: int,
                  directions: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The three per-route conditions, ``[n, d]`` float32 each, rows in ``site_ids`` order.

    ``directions`` are the recorded noise directions (``noise_directions`` when not given)."""
    if recon.shape != gold.shape:
        raise CausalKLError("recon", "reconstruction", f"shape {recon.shape} != gold shape {gold.shape}",
                            "give one reconstruction of the model's width per site")
    g = gold.astype(np.float64)
    rg = goldnorm(recon, gold)
    e = np.linalg.norm(rg - g, axis=1, keepdims=True)
    u = noise_directions(site_ids, gold.shape[1], seed) if directions is None else directions.astype(np.float64)
    u = u / np.linalg.norm(u, axis=1, keepdims=True)  # stored float32 directions, renormalised: ||noise - g|| = e
    return {
        RECON: rg.astype(np.float32),
        RECON_RAW: recon.astype(np.float32),
        NOISE: (g + e * u).astype(np.float32),
    }


def floor_vectors(gold: np.ndarray, site_ids: Sequence[int], choices: pa.Table, mean: np.ndarray,
                  choices_path: str = "conditions/choices.parquet") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The route-independent conditions: name -> (vectors [n, d] float32, valid [n] bool)."""
    index = {int(s): i for i, s in enumerate(site_ids)}
    ch = {int(s): (int(a), int(b)) for s, a, b in zip(choices["site_id"].to_pylist(), choices["same_doc_source"].to_pylist(),
                                                     choices["cross_doc_source"].to_pylist())}
    n, d = gold.shape
    same = np.zeros_like(gold)
    cross = np.zeros_like(gold)
    same_ok = np.zeros(n, dtype=bool)
    for i, s in enumerate(site_ids):
        if int(s) not in ch:
            raise CausalKLError(choices_path, "site_id", f"site {s} has no recorded resample choice",
                                f"delete {Path(choices_path).parent} and rerun, so the choices are drawn for these sites")
        a, b = ch[int(s)]
        if a >= 0:
            same[i] = gold[index[a]] if a in index else _missing(a)
            same_ok[i] = True
        cross[i] = gold[index[b]] if b in index else _missing(b)
    ones = np.ones(n, dtype=bool)
    return {
        GOLD: (gold.astype(np.float32), ones),
        SAME_DOC: (same.astype(np.float32), same_ok),
        CROSS_DOC: (cross.astype(np.float32), ones),
        ZERO: (np.zeros_like(gold, dtype=np.float32), ones),
        MEAN: (np.broadcast_to(mean.astype(np.float32), gold.shape).copy(), ones),
    }


def _missing(site: int):
    raise CausalKLError("gold", "site_id", f"resample source site {site} has no gold", "rebuild gold.parquet for every site")


def eval_mean(gold: np.ndarray) -> np.ndarray:
    """Mean gold over the eval set, accumulated in float64: ``[d]``."""
    return gold.astype(np.float64).mean(0)
