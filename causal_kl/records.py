"""The write-up's statistic records: one JSON record per statistic of a route, and the route's headline.

Each function takes a route's per-site table (``PER_SITE``) or its offsets table and returns a
plain dict (written as ``results/{run}/stats/{route}/{name}.json``); the computations are the
pure functions of :mod:`causal_kl.stats`, uncertainty from its site bootstrap.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from causal_kl import stats
from causal_kl.conditions import (ENERGY_CONDITIONS, GOLD, LOSS_FLOORS, MEAN, NOISE, RECON, RECON_RAW, RESAMPLES,
                                  TABLE_ORDER, ZERO)



CORRELATION_COLUMNS = ("direction_mse", "ce0_clean", f"kl0_{RECON}")
"""The per-site columns :func:`correlation_stats` reads."""
PAIRED_COLUMNS = tuple(f"kl0_{c}" for c in (RECON, RECON_RAW, NOISE))
"""The per-site columns :func:`paired_stats` reads."""
ENERGY_COLUMNS = tuple(f"{p}_{c}" for c in ENERGY_CONDITIONS for p in ("kl0", "err"))
"""The per-site columns :func:`energy_stats` reads."""


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
    for c in (RECON, RECON_RAW):
        a = per_site[f"kl0_{c}"].to_numpy(dtype=np.float64)
        b = per_site[f"kl0_{NOISE}"].to_numpy(dtype=np.float64)
        rec = stats.paired_ratio(a, b)
        _, rec["median_ratio_lo"], rec["median_ratio_hi"] = stats.bootstrap([a, b], stats.median_ratio, n_boot, seed, ci)
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
    for c in ENERGY_CONDITIONS:
        k = per_site[f"kl0_{c}"].to_numpy(dtype=np.float64)
        e = per_site[f"err_{c}"].to_numpy(dtype=np.float64)
        est, lo, hi = stats.bootstrap([k, e, kn, en], stats.normalised_damage, n_boot, seed, ci)
        norm[c] = {"value": est, "lo": lo, "hi": hi}
        raw[c] = stats.nanmedian(stats.damage_per_energy(k, e))
    alpha: dict[str, dict] = {}
    alpha_ci: dict[str, dict] = {}
    for anchor in RESAMPLES:
        alpha[anchor], alpha_ci[anchor] = {}, {}
        ka, ea = (per_site[f"{k}_{anchor}"].to_numpy(dtype=np.float64) for k in ("kl0", "err"))
        for c in (RECON, RECON_RAW):
            k, e = (per_site[f"{p}_{c}"].to_numpy(dtype=np.float64) for p in ("kl0", "err"))
            alpha[anchor][c] = stats.mixture_alpha(norm[c]["value"], norm[anchor]["value"])
            _, lo, hi = stats.bootstrap([k, e, ka, ea, kn, en], stats.mixture_alpha_of_sites, n_boot, seed, ci)
            alpha_ci[anchor][c] = {"lo": lo, "hi": hi, "defined": _anchor_defined(norm[anchor])}
    return {"normalised": norm, "median_kl_per_energy": raw, "alpha": alpha, "alpha_ci": alpha_ci,
            "noise_condition": NOISE}


def _anchor_defined(anchor: dict) -> bool:
    """α is defined when the content anchor is more damaging per energy than noise beyond doubt (CI above 1)."""
    lo = anchor.get("lo")
    return bool(lo is not None and np.isfinite(lo) and lo > 1.0)


def floor_offsets(offsets: pd.DataFrame, tolerance: float = 2.0, min_kl: float = 0.0) -> dict:
    """§5: per condition, the first offset whose median KL is at the gold floor (None if never)."""
    out = {"tolerance": tolerance, "min_kl": min_kl, "first_offset_at_floor": {},
           "median_kl_offset0": {}, "median_kl_offset1": {}}
    if GOLD not in offsets:
        return out
    floor = offsets[GOLD].to_numpy(dtype=np.float64)
    for c in TABLE_ORDER:
        if c == GOLD or c not in offsets:
            continue
        med = offsets[c].to_numpy(dtype=np.float64)
        out["first_offset_at_floor"][c] = stats.offset_reaching_floor(med, floor, tolerance, min_kl)
        out["median_kl_offset0"][c] = float(med[0]) if len(med) > 0 else None
        out["median_kl_offset1"][c] = float(med[1]) if len(med) > 1 else None
    return out


def headline(conditions: pd.DataFrame, fve: float | None) -> dict:
    """The route's headline numbers from its conditions table (``causal_kl.tables.conditions_table``).

    Loss recovered vs a floor F is only defined when F does damage: ``loss_recovered_defined_vs_F`` is
    False when F's mean ΔCE@0 is not above 0 beyond its bootstrap CI (the ratio's denominator could be
    0, and the score can land anywhere); the report then says "undefined" instead of a number.
    """
    c = conditions.set_index("condition")
    out: dict = {}
    for f in (LOSS_FLOORS[0], MEAN, ZERO):
        key = f"loss_recovered_vs_{f}"
        out[key] = float(c.loc[RECON, key])
        out[f"{key}_lo"], out[f"{key}_hi"] = float(c.loc[RECON, f"{key}_lo"]), float(c.loc[RECON, f"{key}_hi"])
        lo = float(c.loc[f, "dce0_mean_lo"]) if "dce0_mean_lo" in c else float("nan")
        out[f"loss_recovered_defined_vs_{f}"] = bool(np.isfinite(lo) and lo > 0)
    out.update({
        "median_kl0_recon": float(c.loc[RECON, "kl0_median"]),
        "median_kl0_gold_floor": float(c.loc[GOLD, "kl0_median"]),
        "fve": fve,
        "n_sites": int(c.loc[RECON, "n"]),
    })
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
