"""Per-site tables: what every route statistic, table and figure at offset 0 starts from.

``error_norms``: per site, the norm of the error ``‖v − g‖`` each route-independent floor
places at (L, p) (resamples, zero, mean), computed once per run. ``per_site_table``: one row
per site of a route (contract ``PER_SITE``): KL@0 and ΔCE@0 of every condition (NaN where a
site lacks one), the error norm of every condition, the route's geometry, clean CE@0 and the
site's token.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from causal_kl.conditions import (CLEAN, ERROR_FLOORS, GOLD, MEASURED, NOISE, RECON, RECON_RAW,
                                  RESAMPLE_SOURCE_COLUMNS, ZERO, MEAN)
from causal_kl.errors import CausalKLError

GEOMETRY_COLUMNS = ("cos", "direction_mse", "gold_norm", "recon_norm", "noise_norm")


VALUES_AT_ONCE = 1 << 20
"""Gold values converted to float64 at a time (whole rows, at least one): at 100k sites of width 5376 all at once
would be 4.3 GB, and the norms' temporaries as much again."""


def error_norms(site_ids: np.ndarray, gold: np.ndarray, choices: pa.Table, mean: np.ndarray,
                choices_path: str = "conditions/choices.parquet") -> pd.DataFrame:
    """Route-independent error norms per site: ``‖g_src − g‖`` for each resample, ``‖g‖``, ``‖mean − g‖``.

    ``gold [n, d]`` in the order of ``site_ids``; ``mean [d]``. Sites without a same-document
    sibling (source −1) get NaN for the same-document resample. Norms are taken in float64, a block
    of rows at a time (the same per-row arithmetic as all rows at once).
    """
    n = len(site_ids)
    mean = np.asarray(mean, dtype=np.float64)
    zero, to_mean = np.empty(n), np.empty(n)
    rows = max(1, VALUES_AT_ONCE // max(gold.shape[1] if gold.ndim == 2 else 1, 1))
    for i in range(0, n, rows):
        block = np.asarray(gold[i:i + rows], dtype=np.float64)
        zero[i:i + rows] = np.linalg.norm(block, axis=1)
        to_mean[i:i + rows] = np.linalg.norm(block - mean[None, :], axis=1)
    out = pd.DataFrame({"site_id": site_ids})
    out[ZERO] = zero
    out[MEAN] = to_mean
    ch = choices.to_pandas().set_index("site_id").reindex(site_ids)
    for cond, col in RESAMPLE_SOURCE_COLUMNS.items():
        src = ch[col].fillna(-1).astype(np.int64).to_numpy()
        rows = pd.Index(np.asarray(site_ids, dtype=np.int64)).get_indexer(src)
        lost = np.flatnonzero((src >= 0) & (rows < 0))
        if len(lost):
            raise CausalKLError(choices_path, col, f"source site {src[lost[0]]} has no gold",
                                "delete the conditions/ folder and rerun, so choices and golds come from one run")
        norms = np.full(n, np.nan)
        for i in np.flatnonzero(src >= 0):
            norms[i] = np.linalg.norm(np.asarray(gold[rows[i]], dtype=np.float64) - np.asarray(gold[i], dtype=np.float64))
        out[cond] = norms
    return out[["site_id", *ERROR_FLOORS]]


def wide(df: pd.DataFrame, value: str, offset: int = 0) -> pd.DataFrame:
    """Sites × conditions of ``value`` at one offset (NaN where a site lacks a condition)."""
    sub = df[df["offset"] == offset]
    out = sub.pivot_table(index="site_id", columns="condition", values=value, aggfunc="first", observed=True)
    return out.astype(np.float64)


def per_site_table(patch: pd.DataFrame, geometry: pd.DataFrame, errors: pd.DataFrame,
                   sites: pd.DataFrame) -> pd.DataFrame:
    """One row per site: KL@0, ΔCE@0 and error norm of every condition, geometry, clean CE, token."""
    kl0 = wide(patch, "kl")
    dce0 = wide(patch, "delta_ce")
    ce0 = wide(patch, "ce")
    ids = kl0.index.to_numpy()
    out = pd.DataFrame({"site_id": ids})
    s = sites.set_index("site_id").reindex(ids)
    out["doc_id"] = s["doc_id"].to_numpy()
    out["token_id"] = s["token_id"].to_numpy()
    out["token"] = s["token"].to_numpy()
    out["ce0_clean"] = ce0[CLEAN].reindex(ids).to_numpy() if CLEAN in ce0 else np.nan
    g = geometry.set_index("site_id").reindex(ids)
    for col in GEOMETRY_COLUMNS:
        out[col] = g[col].to_numpy(dtype=np.float64)
    e = errors.set_index("site_id").reindex(ids)
    for c in MEASURED:
        out[f"kl0_{c}"] = kl0[c].reindex(ids).to_numpy() if c in kl0 else np.nan
        out[f"dce0_{c}"] = dce0[c].reindex(ids).to_numpy() if c in dce0 else np.nan
    out[f"err_{GOLD}"] = 0.0
    out[f"err_{RECON}"] = out["noise_norm"]
    out[f"err_{NOISE}"] = out["noise_norm"]
    rn, gn, cs = out["recon_norm"], out["gold_norm"], out["cos"]
    out[f"err_{RECON_RAW}"] = np.sqrt(np.maximum(rn ** 2 + gn ** 2 - 2 * rn * gn * cs, 0.0))
    for c in ERROR_FLOORS:
        out[f"err_{c}"] = e[c].to_numpy(dtype=np.float64)
    return out
