"""Statistics of the causal-KL write-up: pure functions, one metric each, on numpy arrays.

Every function takes per-site arrays (aligned by site, NaN where a site has no value) and
returns plain floats or small dicts, so each can be checked against a direct computation.
Uncertainty comes from :func:`bootstrap`, which resamples *sites* with a seeded generator.
"""

from __future__ import annotations

import warnings
from typing import Callable, Sequence

import numpy as np


BOOTSTRAP_CHUNK = 1 << 21
"""Resampled site indices a bootstrap draws at once (chunks of whole replicates, at least one)."""


def bootstrap(
    arrays: Sequence[np.ndarray],
    statistic: Callable[..., float],
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> tuple[float, float, float]:
    """Point estimate and percentile CI of ``statistic(*arrays)``, resampling sites.

    ``arrays`` are per-site arrays of equal length ``[n_sites]``, resampled jointly (the same
    site indices for each), so paired statistics stay paired. Returns ``(estimate, lo, hi)``;
    ``lo``/``hi`` are NaN when ``n_boot`` is 0 or there are no sites.
    """
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    n = len(arrays[0]) if arrays else 0
    if any(len(a) != n for a in arrays):
        raise ValueError("bootstrap: arrays must have one value per site (equal lengths)")
    est = float(statistic(*arrays)) if n else float("nan")
    if n_boot <= 0 or n == 0:
        return est, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot, dtype=np.float64)
    rows = max(1, BOOTSTRAP_CHUNK // n)
    for start in range(0, n_boot, rows):
        # the resamples a chunk at a time: the generator yields the same indices as one [n_boot, n] draw (tested),
        # without holding n_boot x n of them (1000 x 100k sites: 0.8 GB, and as much again for the values)
        idx = rng.integers(0, n, size=(min(rows, n_boot - start), n))
        if statistic is nanmedian and len(arrays) == 1:
            # every replicate's median at once: the same order statistics, so bit-identical to the loop (tested),
            # ~20x faster
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a replicate of only NaN sites: NaN, dropped below
                reps[start:start + len(idx)] = np.nanmedian(arrays[0][idx], axis=1)
        else:
            reps[start:start + len(idx)] = [statistic(*(a[i] for a in arrays)) for i in idx]
    reps = reps[np.isfinite(reps)]
    if reps.size == 0:
        return est, float("nan"), float("nan")
    q = (1.0 - ci) / 2.0
    lo, hi = np.quantile(reps, [q, 1.0 - q])
    return est, float(lo), float(hi)


def nanmedian(x: np.ndarray) -> float:
    """Median over the sites that have a value (NaN when none do)."""
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else float("nan")


def nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(np.mean(x)) if x.size else float("nan")


def nanquantile(x: np.ndarray, q: float) -> float:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(np.quantile(x, q)) if x.size else float("nan")


def loss_recovered(delta_ce: np.ndarray, delta_ce_floor: np.ndarray) -> float:
    """``1 − mean ΔCE(condition) / mean ΔCE(floor)`` at one offset (the design card's definition).

    Each mean is over the sites that have the condition (NaN-skipping), so a floor missing for
    some sites (same-document resample) is averaged over the sites that have it.
    """
    den = nanmean(delta_ce_floor)
    if not np.isfinite(den) or den == 0:
        return float("nan")
    return 1.0 - nanmean(delta_ce) / den


def spearman(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Spearman rank correlation over the sites where both are finite: ``{rho, p, n}``."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    n = int(ok.sum())
    if n < 3:
        return {"rho": float("nan"), "p": float("nan"), "n": n}
    from scipy import stats as _sps  # here, not at import: most analysis jobs never test (scipy.stats costs 0.6 s)

    res = _sps.spearmanr(x[ok], y[ok])
    return {"rho": float(res.statistic), "p": float(res.pvalue), "n": n}


def paired_ratio(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Per-site ratio ``a / b`` (e.g. KL recon / KL matched noise): median ratio, share a > b.

    Sites where either value is missing are skipped; sites with ``b == 0`` have no ratio and
    are left out of the median (counted in ``n_zero_denominator``) but do count in the share.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    pos = b > 0
    ratio = a[pos] / b[pos]
    return {
        "median_ratio": float(np.median(ratio)) if ratio.size else float("nan"),
        "share_a_worse": float(np.mean(a > b)) if a.size else float("nan"),
        "n": int(a.size),
        "n_zero_denominator": int((~pos).sum()),
    }


def median_ratio(a: np.ndarray, b: np.ndarray) -> float:
    """Median of the per-site ratio ``a / b`` (the paired ratio alone, for bootstrapping)."""
    return paired_ratio(a, b)["median_ratio"]


def wilcoxon(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Two-sided Wilcoxon signed-rank test of ``a − b`` over paired sites: ``{statistic, p, n}``."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    d = a[ok] - b[ok]
    n = int((d != 0).sum())
    if n < 1:
        return {"statistic": float("nan"), "p": float("nan"), "n": n}
    from scipy import stats as _sps

    res = _sps.wilcoxon(a[ok], b[ok], zero_method="wilcox", alternative="two-sided")
    return {"statistic": float(res.statistic), "p": float(res.pvalue), "n": n}


def damage_per_energy(kl: np.ndarray, error_norm: np.ndarray) -> np.ndarray:
    """Per-site KL per unit squared error norm, ``KL / ‖error‖²`` (NaN where the norm is 0 or missing)."""
    kl = np.asarray(kl, dtype=np.float64)
    e2 = np.asarray(error_norm, dtype=np.float64) ** 2
    out = np.full(kl.shape, np.nan)
    ok = np.isfinite(kl) & np.isfinite(e2) & (e2 > 0)
    out[ok] = kl[ok] / e2[ok]
    return out


def normalised_damage(kl: np.ndarray, error_norm: np.ndarray, kl_noise: np.ndarray,
                      noise_norm: np.ndarray) -> float:
    """Median damage per unit energy of a condition divided by that of matched noise (noise = 1)."""
    den = nanmedian(damage_per_energy(kl_noise, noise_norm))
    if not np.isfinite(den) or den == 0:
        return float("nan")
    return nanmedian(damage_per_energy(kl, error_norm)) / den


def mixture_alpha(s_recon: float, s_content: float) -> float:
    """Share α of content-like error if the residual were α·content + (1−α)·chance.

    ``α = (s_recon − 1) / (s_content − 1)`` with damage-per-energy normalised to noise = 1.
    """
    if not (np.isfinite(s_recon) and np.isfinite(s_content)) or s_content == 1:
        return float("nan")
    return (s_recon - 1.0) / (s_content - 1.0)


def mixture_alpha_of_sites(kl: np.ndarray, error_norm: np.ndarray, kl_content: np.ndarray, content_norm: np.ndarray,
                           kl_noise: np.ndarray, noise_norm: np.ndarray) -> float:
    """The mixture share α from per-site arrays (damage per energy of the condition and of a content anchor,
    both normalised to matched noise): what :func:`bootstrap` resamples for α's CI."""
    return mixture_alpha(normalised_damage(kl, error_norm, kl_noise, noise_norm),
                         normalised_damage(kl_content, content_norm, kl_noise, noise_norm))


def fve_equivalent(direction_mse: np.ndarray, variance: float) -> float:
    """``1 − mean(direction-MSE) / Var``: the FVE a set of sites would score on its own."""
    if variance is None or not np.isfinite(variance) or variance <= 0:
        return float("nan")
    return 1.0 - nanmean(direction_mse) / variance


def offset_reaching_floor(median_kl: np.ndarray, floor_kl: np.ndarray, tolerance: float = 2.0,
                          min_kl: float = 0.0) -> int | None:
    """First offset at which a condition's median KL is at the gold floor, or None if never.

    ``median_kl[k]`` and ``floor_kl[k]`` are median KLs at offset ``k`` (``[n_offsets]``, NaN
    where absent). The condition is at the floor at ``k`` when
    ``median_kl[k] ≤ max(tolerance · floor_kl[k], min_kl)``.
    """
    median_kl = np.asarray(median_kl, dtype=np.float64)
    floor_kl = np.asarray(floor_kl, dtype=np.float64)
    for k in range(len(median_kl)):
        if not (np.isfinite(median_kl[k]) and np.isfinite(floor_kl[k])):
            continue
        if median_kl[k] <= max(tolerance * floor_kl[k], min_kl):
            return k
    return None


def quartile_labels(x: np.ndarray) -> np.ndarray:
    """Quartile index 0..3 of each site by ``x`` (rank-based, equal counts; −1 where ``x`` is NaN)."""
    x = np.asarray(x, dtype=np.float64)
    out = np.full(x.shape, -1, dtype=np.int64)
    ok = np.flatnonzero(np.isfinite(x))
    order = ok[np.argsort(x[ok], kind="stable")]
    for q, chunk in enumerate(np.array_split(order, 4)):
        out[chunk] = q
    return out
