"""Geometry of a route's reconstructions against the golds, and FVE.

Conventions (design.md): both vectors are scaled to L2 norm sqrt(d) before comparing, so the
direction-MSE is ``mean((r̂ - ĝ)**2) = 2 (1 - cos)``. FVE = 1 - mean(direction-MSE) / Var, with
Var the total variance of the sqrt(d)-scaled golds divided by d (population variance over sites,
summed over dimensions). The matched-noise error norm is ``e = ||r/||r||·||g|| - g||``, the
exact norm of the ``noise_matched`` perturbation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from causal_kl.errors import CausalKLError


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


def check_recheck(summary: dict[str, Any], route_name: str) -> None:
    """Stop the run when a route's stated ``expected_fve`` disagrees with the recomputed FVE."""
    check = summary["recheck"]
    if check is not None and not check["pass"]:
        raise CausalKLError(f"config routes.{route_name}", "expected_fve",
                            f"recomputed FVE {check['measured']:.4f} differs from the expected {check['expected']:.4f} "
                            f"by {check['difference']:+.4f} (tolerance {check['tolerance']})",
                            "check that the reconstructions, golds and layer belong together, or correct expected_fve")
