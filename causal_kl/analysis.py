"""Analysis inputs: read the patch, geometry and gold files into per-site tables.

The per-site table of a route (``results/{run}/analysis/{route}/per_site.parquet``) is
what every route statistic, table and figure at offset 0 starts from. Columns
(``PER_SITE_COLUMNS`` plus, per condition ``c``):

- ``kl0_{c}``, ``dce0_{c}``: KL and ΔCE at offset 0 (NaN when a site lacks the condition)
- ``err_{c}``: the norm of the error the condition puts at (L, p), ``‖v − g‖``

The route-independent error norms (resamples, zero, mean) live in
``results/{run}/analysis/error_norms.parquet`` so that they are computed once per run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from causal_kl import CONDITIONS, FLOOR_CONDITIONS, ROUTE_CONDITIONS
from causal_kl.contracts import CONDITION_CHOICES, GEOMETRY, GOLD, PATCH, SITES
from causal_kl.errors import CausalKLError
from causal_kl.io import arrow_to_vectors, read_parquet

log = logging.getLogger(__name__)

MEASURED = tuple(c for c in CONDITIONS if c != "clean")
"""The eight patched conditions, in the write-up's table order (floors and route mixed)."""

LABELS = {
    "clean": "clean",
    "gold": "gold repatch (floor)",
    "recon_goldnorm": "reconstruction (gold norm)",
    "recon_rawnorm": "reconstruction (raw norm)",
    "noise_matched": "matched-MSE noise",
    "resample_same_doc": "resample, same doc",
    "resample_cross_doc": "resample, cross-doc",
    "zero": "zero ablation",
    "mean": "mean ablation",
}
"""Human names of the conditions, as the write-up prints them."""

TABLE_ORDER = ("gold", "recon_goldnorm", "recon_rawnorm", "noise_matched",
               "resample_same_doc", "resample_cross_doc", "zero", "mean")
LOSS_FLOORS = ("resample_cross_doc", "resample_same_doc", "zero", "mean")
"""Floors that loss recovered is reported against; the first is the headline."""

ERROR_FLOORS = ("resample_same_doc", "resample_cross_doc", "zero", "mean")
PER_SITE_COLUMNS = ("site_id", "doc_id", "token_id", "ce0_clean", "cos", "direction_mse",
                    "gold_norm", "recon_norm", "noise_norm")


def read_patch(path: str | Path, route: str | None = None, offsets: Iterable[int] | None = None) -> pd.DataFrame:
    """PATCH rows of the floors and (when given) one route, optionally only some offsets."""
    table = read_parquet(path, PATCH)
    mask = pc.equal(table["route"], "")
    if route is not None:
        mask = pc.or_(mask, pc.equal(table["route"], route))
    if offsets is not None:
        mask = pc.and_(mask, pc.is_in(table["offset"], value_set=pa.array(list(offsets), pa.int32())))
    df = table.filter(mask).to_pandas()
    if route is not None:
        # a route's own `clean` rows (if any) duplicate the floors' ones
        df = df[~((df["route"] == route) & ~df["condition"].isin(ROUTE_CONDITIONS))]
        if not df["route"].eq(route).any():
            raise CausalKLError(path, "route", f"no rows for route '{route}'",
                                f"patch the route first (snakemake results/.../patch/{route}/...)")
    if not df["route"].eq("").any():
        raise CausalKLError(path, "route", "no floor rows (route \"\")", "patch the floors first")
    return df


def wide(df: pd.DataFrame, value: str, offset: int = 0) -> pd.DataFrame:
    """Sites × conditions of ``value`` at one offset (NaN where a site lacks a condition)."""
    sub = df[df["offset"] == offset]
    out = sub.pivot_table(index="site_id", columns="condition", values=value, aggfunc="first")
    return out.astype(np.float64)


def read_gold(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(site_ids [n], activations [n, d] float64)`` from a GOLD file."""
    table = read_parquet(path, GOLD)
    return (table["site_id"].to_numpy().astype(np.int64),
            arrow_to_vectors(table["activation"], path, "activation").astype(np.float64))


def error_norms(gold_path: str | Path, choices_path: str | Path, mean_path: str | Path) -> pd.DataFrame:
    """Route-independent error norms per site: ``‖g_src − g‖`` for each resample, ``‖g‖``, ``‖mean − g‖``.

    Sites without a same-document sibling (source −1) get NaN for ``resample_same_doc``.
    """
    site_ids, gold = read_gold(gold_path)
    row_of = {int(s): i for i, s in enumerate(site_ids)}
    choices = read_parquet(choices_path, CONDITION_CHOICES).to_pandas()
    mean_tab = read_parquet(mean_path)
    if "mean" not in mean_tab.column_names:
        raise CausalKLError(mean_path, "mean", "column missing", "write the eval-set mean gold as a `mean` vector column")
    mean_vec = arrow_to_vectors(mean_tab["mean"], mean_path, "mean").astype(np.float64)[0]
    out = pd.DataFrame({"site_id": site_ids})
    out["zero"] = np.linalg.norm(gold, axis=1)
    out["mean"] = np.linalg.norm(gold - mean_vec[None, :], axis=1)
    choices = choices.set_index("site_id").reindex(site_ids)
    for cond, col in (("resample_same_doc", "same_doc_source"), ("resample_cross_doc", "cross_doc_source")):
        src = choices[col].fillna(-1).astype(np.int64).to_numpy()
        norms = np.full(len(site_ids), np.nan)
        for i, s in enumerate(src):
            if s >= 0:
                if int(s) not in row_of:
                    raise CausalKLError(choices_path, col, f"source site {s} has no gold",
                                        "rebuild the conditions from the same gold file")
                norms[i] = np.linalg.norm(gold[row_of[int(s)]] - gold[i])
        out[cond] = norms
    return out


def per_site_table(patch: pd.DataFrame, route: str, geometry: pd.DataFrame, errors: pd.DataFrame,
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
    out["ce0_clean"] = ce0["clean"].reindex(ids).to_numpy() if "clean" in ce0 else np.nan
    g = geometry.set_index("site_id").reindex(ids)
    for col in ("cos", "direction_mse", "gold_norm", "recon_norm", "noise_norm"):
        out[col] = g[col].to_numpy(dtype=np.float64)
    e = errors.set_index("site_id").reindex(ids)
    for c in MEASURED:
        out[f"kl0_{c}"] = kl0[c].reindex(ids).to_numpy() if c in kl0 else np.nan
        out[f"dce0_{c}"] = dce0[c].reindex(ids).to_numpy() if c in dce0 else np.nan
    out["err_gold"] = 0.0
    out["err_recon_goldnorm"] = out["noise_norm"]
    out["err_noise_matched"] = out["noise_norm"]
    rn, gn, cs = out["recon_norm"], out["gold_norm"], out["cos"]
    out["err_recon_rawnorm"] = np.sqrt(np.maximum(rn ** 2 + gn ** 2 - 2 * rn * gn * cs, 0.0))
    for c in ERROR_FLOORS:
        out[f"err_{c}"] = e[c].to_numpy(dtype=np.float64)
    return out


def read_json(path: str | Path | None) -> dict:
    """A JSON file as a dict; {} when the path is None or missing (inputs read defensively)."""
    if path is None or not Path(path).exists():
        return {}
    with open(path) as fh:
        try:
            obj = json.load(fh)
        except json.JSONDecodeError as e:
            raise CausalKLError(path, None, f"not valid JSON ({e.msg})", "rebuild the file with snakemake") from e
    return obj if isinstance(obj, dict) else {"value": obj}


def find_key(obj: Any, names: Iterable[str]) -> Any:
    """The first value under any of ``names`` (case-insensitive), searching nested dicts breadth-first."""
    wanted = [n.lower() for n in names]
    queue = [obj]
    while queue:
        cur = queue.pop(0)
        if isinstance(cur, dict):
            low = {str(k).lower(): v for k, v in cur.items()}
            for n in wanted:
                if n in low and not isinstance(low[n], dict):
                    return low[n]
            queue.extend(v for v in cur.values() if isinstance(v, dict))
    return None


def geometry_variance(geometry_json: dict) -> float | None:
    """Var (total variance of √d-scaled golds / d) from a route's geometry JSON, if it states one."""
    v = find_key(geometry_json, ("var", "variance", "var_recomputed", "variance_recomputed", "total_variance"))
    try:
        return float(v) if v is not None else None
    except (TypeError, ValueError):
        return None


def geometry_fve(geometry_json: dict) -> float | None:
    """The route's FVE from its geometry JSON, if it states one."""
    v = find_key(geometry_json, ("fve", "fve_recomputed", "fve_measured"))
    try:
        return float(v) if v is not None else None
    except (TypeError, ValueError):
        return None


def read_geometry(path: str | Path) -> pd.DataFrame:
    return read_parquet(path, GEOMETRY).to_pandas()


def read_sites(path: str | Path) -> pd.DataFrame:
    return read_parquet(path, SITES).to_pandas()


__all__ = [
    "FLOOR_CONDITIONS", "LABELS", "LOSS_FLOORS", "MEASURED", "TABLE_ORDER", "error_norms",
    "find_key", "geometry_fve", "geometry_variance", "per_site_table", "read_geometry", "read_gold",
    "read_json", "read_patch", "read_sites", "wide",
]
