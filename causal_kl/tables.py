"""The write-up's tables and statistic records, computed from per-site tables.

Each function returns a DataFrame (tables: CSV and rendered in the report) or a dict
(statistics: JSON). With a reference given, :func:`with_reference` adds the published
value and the difference beside each measured column the write-up reports.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import pandas as pd

from causal_kl import stats
from causal_kl.analysis import LABELS, LOSS_FLOORS, MEASURED, TABLE_ORDER

REFERENCE_DIR = Path(__file__).resolve().parent.parent / "reports" / "reference"
"""The write-up's published numbers (CSV/JSON), shown beside measured ones for production runs."""

DIGIT_CLASS = {"digit": r"^\s*\d+\s*$"}
"""The token class the write-up reports (a token that is digits only, spaces aside)."""

RECON = "recon_goldnorm"
NOISE = "noise_matched"


def _boot(arrays, fn, n_boot, seed, ci):
    return stats.bootstrap(arrays, fn, n_boot=n_boot, seed=seed, ci=ci)


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
        row["kl0_median"], row["kl0_median_lo"], row["kl0_median_hi"] = _boot([kl], stats.nanmedian, n_boot, seed, ci)
        row["kl0_mean"] = stats.nanmean(kl)
        row["kl0_p90"] = stats.nanquantile(kl, 0.9)
        row["dce0_median"], row["dce0_median_lo"], row["dce0_median_hi"] = _boot([dce], stats.nanmedian, n_boot, seed, ci)
        row["dce0_mean"] = stats.nanmean(dce)
        for f in LOSS_FLOORS:
            fl = per_site[f"dce0_{f}"].to_numpy(dtype=np.float64)
            key = f"loss_recovered_vs_{f}"
            row[key], row[f"{key}_lo"], row[f"{key}_hi"] = _boot([dce, fl], stats.loss_recovered, n_boot, seed, ci)
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
        r, lo, hi = _boot([kr[m], kn[m]], stats.median_ratio, n_boot, seed, ci)
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
    sub = patch[patch["condition"] != "clean"]
    med = sub.groupby(["offset", "condition"])["kl"].median().unstack("condition")
    cols = [c for c in TABLE_ORDER if c in med.columns]
    out = med[cols].astype(np.float64).reset_index()
    n = sub[sub["condition"] == "gold"].groupby("offset")["site_id"].nunique() if (sub["condition"] == "gold").any() \
        else sub.groupby("offset")["site_id"].nunique()
    out.insert(1, "n_sites", out["offset"].map(n).fillna(0).astype(int))
    return out


def token_class_table(per_site: pd.DataFrame, decode: Callable[[int], str],
                      classes: Mapping[str, str] | None = None, variance: float | None = None) -> pd.DataFrame:
    """Median KL@0 of the route conditions for sites whose token is / is not in each class.

    ``classes`` maps a class name to a regex searched in the decoded token at the site;
    the write-up's digit class is always included. With ``variance`` (Var), each group's
    FVE-equivalent (1 − mean direction-MSE / Var) is reported too.
    """
    classes = {**DIGIT_CLASS, **dict(classes or {})}
    text = per_site["token_id"].map(lambda t: decode(int(t)))
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
            for c in ("recon_goldnorm", "recon_rawnorm", "noise_matched"):
                row[f"kl0_median_{c}"] = stats.nanmedian(per_site.loc[m, f"kl0_{c}"].to_numpy())
            rows.append(row)
    return pd.DataFrame(rows)


def routes_table(conditions: Mapping[str, pd.DataFrame], fve: Mapping[str, float | None]) -> pd.DataFrame:
    """Multi-route comparison: headline loss recovered and median KL@0 (with CIs) per route."""
    rows = []
    for route, df in conditions.items():
        d = df.set_index("condition")
        row = {"route": route, "fve": fve.get(route), "n": int(d.loc[RECON, "n"])}
        for c, tag in ((RECON, "recon"), ("recon_rawnorm", "rawnorm"), (NOISE, "noise")):
            for k in ("kl0_median", "kl0_median_lo", "kl0_median_hi"):
                row[f"{tag}_{k}"] = float(d.loc[c, k])
            for k in ("", "_lo", "_hi"):
                row[f"{tag}_loss_recovered{k}"] = float(d.loc[c, f"loss_recovered_vs_resample_cross_doc{k}"])
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- statistics (JSON records)

def correlation_stats(per_site: pd.DataFrame) -> dict:
    """§3: Spearman ρ, p of direction-MSE vs KL@0 (recon) and of clean CE@0 vs KL@0 (recon)."""
    kr = per_site[f"kl0_{RECON}"].to_numpy(dtype=np.float64)
    return {
        "dmse_vs_kl0": stats.spearman(per_site["direction_mse"].to_numpy(dtype=np.float64), kr),
        "clean_ce_vs_kl0": stats.spearman(per_site["ce0_clean"].to_numpy(dtype=np.float64), kr),
        "recon_condition": RECON,
    }


def paired_stats(per_site: pd.DataFrame, n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> dict:
    """§4: recon vs matched noise per site: median ratio (+CI), share recon worse, Wilcoxon p."""
    out = {}
    for c in (RECON, "recon_rawnorm"):
        a = per_site[f"kl0_{c}"].to_numpy(dtype=np.float64)
        b = per_site[f"kl0_{NOISE}"].to_numpy(dtype=np.float64)
        rec = stats.paired_ratio(a, b)
        _, rec["median_ratio_lo"], rec["median_ratio_hi"] = _boot([a, b], stats.median_ratio, n_boot, seed, ci)
        w = stats.wilcoxon(a, b)
        rec["wilcoxon_statistic"], rec["wilcoxon_p"] = w["statistic"], w["p"]
        out[c] = rec
    return out


def energy_stats(per_site: pd.DataFrame, n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> dict:
    """§4: median KL@0 / ‖error‖² per condition normalised to noise = 1, and the mixture α."""
    kn = per_site[f"kl0_{NOISE}"].to_numpy(dtype=np.float64)
    en = per_site[f"err_{NOISE}"].to_numpy(dtype=np.float64)
    norm: dict[str, dict] = {}
    raw = {}
    for c in (NOISE, RECON, "recon_rawnorm", "resample_same_doc", "resample_cross_doc", "zero", "mean"):
        k = per_site[f"kl0_{c}"].to_numpy(dtype=np.float64)
        e = per_site[f"err_{c}"].to_numpy(dtype=np.float64)
        est, lo, hi = _boot([k, e, kn, en], stats.normalised_damage, n_boot, seed, ci)
        norm[c] = {"value": est, "lo": lo, "hi": hi}
        raw[c] = stats.nanmedian(stats.damage_per_energy(k, e))
    alpha = {}
    for anchor in ("resample_same_doc", "resample_cross_doc"):
        alpha[anchor] = {c: stats.mixture_alpha(norm[c]["value"], norm[anchor]["value"])
                         for c in (RECON, "recon_rawnorm")}
    return {"normalised": norm, "median_kl_per_energy": raw, "alpha": alpha, "noise_condition": NOISE}


def floor_offsets(offsets: pd.DataFrame, tolerance: float = 2.0, min_kl: float = 0.0) -> dict:
    """§5: per condition, the first offset whose median KL is at the gold floor (None if never)."""
    out = {"tolerance": tolerance, "min_kl": min_kl, "first_offset_at_floor": {},
           "median_kl_offset0": {}, "median_kl_offset1": {}}
    if "gold" not in offsets:
        return out
    floor = offsets["gold"].to_numpy(dtype=np.float64)
    for c in TABLE_ORDER:
        if c == "gold" or c not in offsets:
            continue
        med = offsets[c].to_numpy(dtype=np.float64)
        out["first_offset_at_floor"][c] = stats.offset_reaching_floor(med, floor, tolerance, min_kl)
        out["median_kl_offset0"][c] = float(med[0]) if len(med) > 0 else None
        out["median_kl_offset1"][c] = float(med[1]) if len(med) > 1 else None
    return out


# ---------------------------------------------------------------- reference numbers

def load_reference(directory: str | Path = REFERENCE_DIR) -> dict:
    """The write-up's published tables (DataFrames) and statistics (dict) from ``reports/reference``."""
    d = Path(directory)
    ref = {name: pd.read_csv(d / f"{name}.csv") for name in ("conditions", "quartiles", "offsets", "token_classes")
           if (d / f"{name}.csv").exists()}
    if (d / "stats.json").exists():
        ref["stats"] = json.loads((d / "stats.json").read_text())
    return ref


def with_reference(measured: pd.DataFrame, published: pd.DataFrame | None, key: str) -> pd.DataFrame:
    """Insert ``{col}_published`` and ``{col}_diff`` (measured − published) after each column both share."""
    if published is None:
        return measured
    pub = published.set_index(key)
    out = measured.copy()
    for col in [c for c in measured.columns if c in pub.columns and c != key]:
        vals = out[key].map(pub[col]).astype(np.float64)
        pos = out.columns.get_loc(col)
        # place after the column's own CI columns, if any
        while pos + 1 < len(out.columns) and out.columns[pos + 1] in (f"{col}_lo", f"{col}_hi"):
            pos += 1
        out.insert(pos + 1, f"{col}_published", vals)
        out.insert(pos + 2, f"{col}_diff", out[col].astype(np.float64) - vals)
    return out


def flatten_stats(record: Mapping, prefix: str = "") -> dict[str, float | None]:
    """Nested statistic record -> ``{"a.b.c": value}`` for display and comparison."""
    out: dict = {}
    for k, v in record.items():
        name = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten_stats(v, name))
        else:
            out[name] = v
    return out


def stats_table(record: Mapping, published: Mapping | None = None) -> pd.DataFrame:
    """A statistic record as rows ``statistic, measured`` (+ ``published, diff`` when given)."""
    flat = flatten_stats(record)
    rows = [{"statistic": k, "measured": v} for k, v in flat.items()
            if isinstance(v, (int, float, type(None))) and not isinstance(v, bool)]
    df = pd.DataFrame(rows, columns=["statistic", "measured"])
    if published is not None:
        pub = flatten_stats(published)
        df["published"] = df["statistic"].map(lambda s: pub.get(s)).astype(np.float64)
        df["diff"] = pd.to_numeric(df["measured"], errors="coerce") - df["published"]
    return df


__all__ = [
    "DIGIT_CLASS", "MEASURED", "REFERENCE_DIR", "conditions_table", "correlation_stats", "energy_stats",
    "flatten_stats", "floor_offsets", "load_reference", "offsets_table", "paired_stats", "quartile_table",
    "routes_table", "stats_table", "token_class_table", "with_reference",
]
