"""Geometry of a route's reconstructions against the golds, FVE, and the floor-check gate.

Conventions (design.md): both vectors are scaled to L2 norm sqrt(d) before comparing, so the
direction-MSE is ``mean((r̂ - ĝ)**2) = 2 (1 - cos)``. FVE = 1 - mean(direction-MSE) / Var, with
Var the total variance of the sqrt(d)-scaled golds divided by d (population variance over sites,
summed over dimensions). The matched-noise error norm is ``e = ||r/||r||·||g|| - g||``, the
exact norm of the ``noise_matched`` perturbation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from causal_kl.config import config_hash
from causal_kl.contracts import GEOMETRY, RECON
from causal_kl.errors import CausalKLError
from causal_kl.io import arrow_to_vectors, provenance, read_parquet, write_json, write_parquet
from causal_kl.routes.base import gold_for_sites, read_sites

PASS, FAIL, NOT_RUN = "✓", "✗", "–"


def unit_rows(x: np.ndarray) -> np.ndarray:
    """``[n, d]`` -> rows scaled to unit L2 norm (float64); a zero row stays zero."""
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def site_geometry(gold: np.ndarray, recon: np.ndarray) -> pd.DataFrame:
    """Per-site geometry of ``recon [n, d]`` against ``gold [n, d]``.

    Columns: cos, direction_mse (= 2(1 - cos)), gold_norm, recon_norm, noise_norm
    (``||recon_goldnorm - gold||``).
    """
    gold = np.asarray(gold, dtype=np.float64)
    recon = np.asarray(recon, dtype=np.float64)
    if gold.shape != recon.shape:
        raise ValueError(f"gold {gold.shape} and recon {recon.shape} differ")
    d = gold.shape[1]
    g_hat, r_hat = unit_rows(gold), unit_rows(recon)
    cos = np.clip((g_hat * r_hat).sum(axis=1), -1.0, 1.0)
    direction_mse = ((np.sqrt(d) * (r_hat - g_hat)) ** 2).mean(axis=1)
    gold_norm = np.linalg.norm(gold, axis=1)
    recon_goldnorm = r_hat * gold_norm[:, None]
    return pd.DataFrame({
        "cos": cos,
        "direction_mse": direction_mse,
        "gold_norm": gold_norm,
        "recon_norm": np.linalg.norm(recon, axis=1),
        "noise_norm": np.linalg.norm(recon_goldnorm - gold, axis=1),
    })


def gold_variance(gold: np.ndarray) -> float:
    """Var: total variance of the sqrt(d)-scaled golds ``[n, d]`` divided by d (= 1 - ||mean unit gold||²)."""
    d = gold.shape[1]
    scaled = np.sqrt(d) * unit_rows(gold)
    return float(scaled.var(axis=0).sum() / d)


def fve(direction_mse: np.ndarray, variance: float) -> float:
    return float(1.0 - np.mean(direction_mse) / variance)


def fve_recheck(measured: float, route: dict) -> dict[str, Any] | None:
    """Compare a recomputed FVE with the route's ``expected_fve`` (``fve_tolerance``); None when none is stated."""
    expected = route.get("expected_fve")
    if expected is None:
        return None
    tol = float(route.get("fve_tolerance", 0.001))
    diff = measured - float(expected)
    return {"expected": float(expected), "tolerance": tol, "measured": measured,
            "difference": diff, "pass": bool(abs(diff) <= tol)}


def geometry_summary(table: pd.DataFrame, gold: np.ndarray, route_name: str, route: dict,
                     variance_constant: float | None = None) -> dict[str, Any]:
    """The JSON summary of one route: n, Var, FVE (and against a stated Var), re-check."""
    var = gold_variance(gold)
    summary: dict[str, Any] = {
        "route": route_name,
        "kind": route.get("kind"),
        "n": int(len(table)),
        "d": int(gold.shape[1]),
        "variance": var,
        "fve": fve(table["direction_mse"].to_numpy(), var),
        "mean_cos": float(table["cos"].mean()),
        "mean_direction_mse": float(table["direction_mse"].mean()),
        "median_direction_mse": float(table["direction_mse"].median()),
        "mean_gold_norm": float(table["gold_norm"].mean()),
        "mean_recon_norm": float(table["recon_norm"].mean()),
    }
    if variance_constant is not None:
        summary["variance_constant"] = float(variance_constant)
        summary["variance_difference"] = var - float(variance_constant)
        summary["fve_at_variance_constant"] = fve(table["direction_mse"].to_numpy(), float(variance_constant))
    summary["recheck"] = fve_recheck(summary["fve"], route)
    return summary


def compute_geometry(recon_path: str | Path, gold_path: str | Path, sites_path: str | Path, out_parquet: str | Path,
                     out_json: str | Path, route_name: str, config: dict) -> dict[str, Any]:
    """Geometry of one route: read ``RECON`` and golds, write ``GEOMETRY`` parquet and the JSON summary.

    Raises CausalKLError (after nothing is written) when the route states an ``expected_fve``
    and the recomputed FVE differs by more than ``fve_tolerance``.
    """
    route = config["routes"][route_name]
    site_ids = np.asarray(read_sites(sites_path).column("site_id").to_numpy(), dtype=np.int64)
    gold = gold_for_sites(gold_path, site_ids)
    rt = read_parquet(recon_path, RECON, gold.shape[1])
    r_ids = np.asarray(rt.column("site_id").to_numpy(), dtype=np.int64)
    if not np.array_equal(np.sort(r_ids), np.sort(site_ids)):
        raise CausalKLError(recon_path, "site_id", "reconstructions do not cover exactly the eval sites",
                            "rebuild the route (snakemake --forcerun) for the current sites")
    order = {int(s): i for i, s in enumerate(r_ids)}
    recon = arrow_to_vectors(rt.column("reconstruction"), recon_path, "reconstruction")[[order[int(s)] for s in site_ids]]
    table = site_geometry(gold, recon)
    table.insert(0, "site_id", site_ids)
    summary = geometry_summary(table, gold, route_name, route, (config.get("geometry") or {}).get("variance_constant"))
    check = summary["recheck"]
    if check is not None and not check["pass"]:
        raise CausalKLError(f"config routes.{route_name}", "expected_fve",
                            f"recomputed FVE {check['measured']:.4f} differs from the expected {check['expected']:.4f} "
                            f"by {check['difference']:+.4f} (tolerance {check['tolerance']})",
                            "check that the reconstructions, golds and layer belong together, or correct expected_fve")
    meta = provenance(config_hash=config_hash(config), model=config["model"]["path"], route=route_name)
    write_parquet(out_parquet, pa.Table.from_pandas(table, preserve_index=False), GEOMETRY, meta=meta)
    write_json(out_json, summary)
    return summary


# ---------------------------------------------------------------------------- the floor-check gate


def _load_json(obj: str | Path | dict | None) -> dict | None:
    if obj is None or isinstance(obj, dict):
        return obj
    path = Path(obj)
    return json.loads(path.read_text()) if path.exists() else None


def _first(d: dict, *keys: str) -> Any:
    for k in keys:
        if k in d and d[k] is not None:
            return d[k]
    return None


def _check(name: str, label: str, value: Any, bound: Any, ok: bool | None, detail: str,
           route: str | None = None) -> dict[str, Any]:
    """One gate row; ``ok`` None means the check did not run."""
    status = NOT_RUN if ok is None else (PASS if ok else FAIL)
    row = {"name": name, "label": label, "value": value, "bound": bound, "status": status, "pass": ok, "detail": detail}
    if route is not None:
        row["route"] = route
    return row


def floor_gate(reextract_json: str | Path | dict | None, patch_table: pd.DataFrame | str | Path | None,
               geometry_jsons: dict[str, str | Path | dict] | list[str | Path] | None, config: dict) -> dict[str, Any]:
    """The three floor checks of the write-up, with their measured values.

    - ``reextract``: min cos(stored gold, re-extracted gold) > ``gold.min_cos``;
    - ``gold_repatch``: median KL@0 of the ``gold`` condition <= ``patch.gold_repatch_kl_max``
      (``–``, not run, when ``patch_table`` is None);
    - ``fve_recheck``: per route, the recomputed FVE within ``fve_tolerance`` of ``expected_fve``
      (``–`` for a route that states none).

    ``geometry_jsons``: route name -> ``results/{run}/geometry/{route}.json`` (path or loaded dict),
    or a list of paths. Returns ``{"checks": [{"name", "label", "value", "bound", "status", "pass",
    "detail"[, "route"]}, ...], "pass": bool, "line": "re-extract cos>0.999 ✓ · gold repatch KL 0.0004 ✓ ·
    FVE 0.7749 ✓"}``; ``pass`` is False when any check that ran failed or the re-extract result is missing.
    """
    checks: list[dict[str, Any]] = []

    min_cos_bound = float((config.get("gold") or {}).get("min_cos", 0.999))
    label = f"re-extract cos>{min_cos_bound:g}"
    rx = _load_json(reextract_json)
    value = _first(rx, "min_cos", "min") if rx is not None else None
    if value is None:
        checks.append(_check("reextract", label, None, min_cos_bound, False, "no re-extract result"))
    else:
        checks.append(_check("reextract", label, float(value), min_cos_bound, float(value) > min_cos_bound,
                             f"min cos {float(value):.6f}"))

    kl_bound = float((config.get("patch") or {}).get("gold_repatch_kl_max", 0.01))
    if patch_table is None:
        checks.append(_check("gold_repatch", "gold repatch KL", None, kl_bound, None, "patch engine not run"))
    else:
        pt = patch_table if isinstance(patch_table, pd.DataFrame) else pd.read_parquet(patch_table)
        sel = pt[(pt["condition"] == "gold") & (pt["offset"] == 0)]
        if sel.empty:
            checks.append(_check("gold_repatch", "gold repatch KL", None, kl_bound, False,
                                 "no gold rows at offset 0 in the patch table"))
        else:
            med = float(sel["kl"].median())
            checks.append(_check("gold_repatch", f"gold repatch KL {med:.2g}", med, kl_bound, med <= kl_bound,
                                 f"median KL@0 {med:.3g} nats (bound {kl_bound:g}, n={len(sel)})"))

    items = list(geometry_jsons.items()) if isinstance(geometry_jsons, dict) else [(None, g) for g in geometry_jsons or []]
    for name, g in items:
        summary = _load_json(g)
        if summary is None:
            checks.append(_check("fve_recheck", f"FVE {name}", None, None, False, "no geometry summary", route=name))
            continue
        route = summary.get("route", name)
        route_cfg = (config.get("routes") or {}).get(route)
        check = fve_recheck(float(summary["fve"]), route_cfg) if route_cfg else summary.get("recheck")
        label = f"FVE {summary['fve']:.4f}" if len(items) == 1 else f"FVE {route} {summary['fve']:.4f}"
        if check is None:
            checks.append(_check("fve_recheck", label, summary["fve"], None, None, "no expected FVE stated", route=route))
        else:
            checks.append(_check("fve_recheck", label, summary["fve"], [check["expected"], check["tolerance"]],
                                 check["pass"], f"expected {check['expected']:.4f} ± {check['tolerance']:g}, "
                                 f"difference {check['difference']:+.4f}", route=route))
    overall = all(c["pass"] is not False for c in checks)
    line = " · ".join(f"{c['label']} {c['status']}" for c in checks)
    return {"checks": checks, "pass": overall, "line": line}
