"""The write-up's tables, one function each, computed from a route's per-site table (or the patch table).

Each returns a DataFrame that a rule writes as CSV and the report renders. Medians and loss
recovered carry bootstrap CIs (``_lo``/``_hi`` columns) from resampling sites
(:func:`causal_kl.stats.bootstrap`). Published values are added by :mod:`causal_kl.reference`.
"""

from __future__ import annotations

import re
from typing import Mapping

import numpy as np
import pandas as pd

from causal_kl import stats
from causal_kl.conditions import (CLEAN, GOLD, HEADLINE_FLOOR, LABELS, LOSS_FLOORS, NOISE, RECON, RECON_RAW,
                                  ROUTE_CONDITIONS, TABLE_ORDER)

DIGIT_CLASS = {"digit": r"^\s*\d+\s*$"}
"""The token class the write-up reports (a token that is digits only, spaces aside)."""

ROUTE_TAGS = ((RECON, "recon"), (RECON_RAW, "rawnorm"), (NOISE, "noise"))
"""The route conditions of the multi-route table and the column prefix each gets there."""



def conditions_table(per_site: pd.DataFrame, n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> pd.DataFrame:
    """§2: per condition KL@0 median/mean/p90, ΔCE@0 median/mean, loss recovered vs every floor.

    Medians and loss recovered carry bootstrap CIs (``_lo``/``_hi``) from resampling sites.
    Loss recovered vs floor F = 1 − mean ΔCE@0(condition) / mean ΔCE@0(F).
    """
    rows = []
    for c in TABLE_ORDER:
        kl = per_site[f"kl0_{c}"].to_numpy(dtype=np.float64)
        dce = per_site[f"dce0_{c}"].to_numpy(dtype=np.float64)
        n = int(np.isfinite(kl).sum())
        row: dict = {"condition": c, "label": LABELS[c], "n": n}
        row["kl0_median"], row["kl0_median_lo"], row["kl0_median_hi"] = stats.bootstrap([kl], stats.nanmedian, n_boot, seed, ci)
        row["kl0_mean"] = stats.nanmean(kl)
        row["kl0_p90"] = stats.nanquantile(kl, 0.9)
        row["dce0_median"], row["dce0_median_lo"], row["dce0_median_hi"] = stats.bootstrap([dce], stats.nanmedian, n_boot, seed, ci)
        row["dce0_mean"], row["dce0_mean_lo"], row["dce0_mean_hi"] = stats.bootstrap([dce], stats.nanmean, n_boot, seed, ci)
        for f in LOSS_FLOORS:
            fl = per_site[f"dce0_{f}"].to_numpy(dtype=np.float64)
            key = f"loss_recovered_vs_{f}"
            row[key], row[f"{key}_lo"], row[f"{key}_hi"] = stats.bootstrap([dce, fl], stats.loss_recovered, n_boot, seed, ci)
        rows.append(row)
    return pd.DataFrame(rows)


def quartile_table(per_site: pd.DataFrame, variance: float, n_boot: int = 1000, seed: int = 0,
                   ci: float = 0.95) -> pd.DataFrame:
    """§4: quartiles of direction-MSE with FVE-equivalent, median KL recon/noise, paired ratio (+CI)."""
    dmse = per_site["direction_mse"].to_numpy(dtype=np.float64)
    kr = per_site[f"kl0_{RECON}"].to_numpy(dtype=np.float64)
    kn = per_site[f"kl0_{NOISE}"].to_numpy(dtype=np.float64)
    q = stats.quartile_labels(dmse)
    rows = []
    for i in range(4):
        m = q == i
        r, lo, hi = stats.bootstrap([kr[m], kn[m]], stats.median_ratio, n_boot, seed, ci)
        rows.append({
            "quartile": f"Q{i + 1}", "n": int(m.sum()),
            "dmse_min": float(dmse[m].min()) if m.any() else np.nan,
            "dmse_max": float(dmse[m].max()) if m.any() else np.nan,
            "fve_equiv": stats.fve_equivalent(dmse[m], variance),
            "kl_recon_median": stats.nanmedian(kr[m]),
            "kl_noise_median": stats.nanmedian(kn[m]),
            "ratio_median": r, "ratio_median_lo": lo, "ratio_median_hi": hi,
        })
    return pd.DataFrame(rows)


def offsets_table(patch: pd.DataFrame) -> pd.DataFrame:
    """§5: median KL per condition (columns) at each offset 0–31 (rows); n sites per offset too."""
    sub = patch[patch["condition"] != CLEAN]
    med = sub.groupby(["offset", "condition"])["kl"].median().unstack("condition")
    cols = [c for c in TABLE_ORDER if c in med.columns]
    out = med[cols].astype(np.float64).reset_index()
    n = sub[sub["condition"] == GOLD].groupby("offset")["site_id"].nunique() if (sub["condition"] == GOLD).any() \
        else sub.groupby("offset")["site_id"].nunique()
    out.insert(1, "n_sites", out["offset"].map(n).fillna(0).astype(int))
    return out


def token_class_table(per_site: pd.DataFrame, classes: Mapping[str, str] | None = None,
                      variance: float | None = None) -> pd.DataFrame:
    """Median KL@0 of the route conditions for sites whose token is / is not in each class.

    ``classes`` maps a class name to a regex searched in the site's decoded token (``token``);
    the write-up's digit class is always included. With ``variance`` (Var), each group's
    FVE-equivalent (1 − mean direction-MSE / Var) is reported too.
    """
    classes = {**DIGIT_CLASS, **dict(classes or {})}
    text = per_site["token"].fillna("")
    rows = []
    for name, pattern in classes.items():
        rx = re.compile(pattern)
        member = text.map(lambda s: bool(rx.search(s))).to_numpy()
        for is_member in (True, False):
            m = member == is_member
            row = {"token_class": name, "member": is_member,
                   "group": name if is_member else f"not {name}", "n": int(m.sum())}
            if variance is not None:
                row["fve_equiv"] = stats.fve_equivalent(per_site.loc[m, "direction_mse"].to_numpy(), variance)
            for c in ROUTE_CONDITIONS:
                row[f"kl0_median_{c}"] = stats.nanmedian(per_site.loc[m, f"kl0_{c}"].to_numpy())
            rows.append(row)
    return pd.DataFrame(rows)


def routes_table(conditions: Mapping[str, pd.DataFrame], fve: Mapping[str, float | None]) -> pd.DataFrame:
    """Multi-route comparison: headline loss recovered and median KL@0 (with CIs) per route."""
    rows = []
    for route, df in conditions.items():
        d = df.set_index("condition")
        row = {"route": route, "fve": fve.get(route), "n": int(d.loc[RECON, "n"])}
        for c, tag in ROUTE_TAGS:
            for k in ("kl0_median", "kl0_median_lo", "kl0_median_hi"):
                row[f"{tag}_{k}"] = float(d.loc[c, k])
            for k in ("", "_lo", "_hi"):
                row[f"{tag}_loss_recovered{k}"] = float(d.loc[c, f"loss_recovered_vs_{HEADLINE_FLOOR}{k}"])
        rows.append(row)
    return pd.DataFrame(rows)
