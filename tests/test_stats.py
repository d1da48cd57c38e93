"""Each statistic against an independent computation (scipy directly, or numpy/pandas by hand)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from causal_kl import stats


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def test_bootstrap_matches_manual_resampling_and_scipy(rng):
    x = rng.lognormal(size=150)
    est, lo, hi = stats.bootstrap([x], np.median, n_boot=2000, seed=3, ci=0.9)
    # numpy re-implementation of "resample sites, percentile CI"
    idx = np.random.default_rng(3).integers(0, len(x), size=(2000, len(x)))
    reps = np.median(x[idx], axis=1)
    assert est == pytest.approx(np.median(x))
    assert (lo, hi) == pytest.approx(tuple(np.quantile(reps, [0.05, 0.95])))
    # and close to scipy's own percentile bootstrap (different draws, same estimand)
    ref = sps.bootstrap((x,), np.median, n_resamples=4000, method="percentile", confidence_level=0.9,
                       random_state=np.random.default_rng(0)).confidence_interval
    width = ref.high - ref.low
    assert abs(lo - ref.low) < 0.25 * width and abs(hi - ref.high) < 0.25 * width


def test_bootstrap_of_the_median_is_the_loop_bit_for_bit(rng):
    """The vectorised median (every replicate at once) against the plain loop of the definition, NaN sites included."""
    for n, nan_share in ((1, 0.0), (2, 0.0), (7, 0.3), (150, 0.0), (501, 0.1), (64, 0.95)):
        x = rng.lognormal(size=n)
        x[rng.random(n) < nan_share] = np.nan
        idx = np.random.default_rng(5).integers(0, n, size=(400, n))
        loop = np.array([stats.nanmedian(x[i]) for i in idx])
        loop = loop[np.isfinite(loop)]
        expect = tuple(np.quantile(loop, [0.025, 0.975])) if loop.size else (np.nan, np.nan)
        got = stats.bootstrap([x], stats.nanmedian, n_boot=400, seed=5)
        assert got[0] == stats.nanmedian(x) or np.isnan(got[0])
        np.testing.assert_array_equal(got[1:], expect)


@pytest.mark.parametrize("chunk", [1, 7 * 64, 1 << 30])
def test_bootstrap_in_chunks_is_one_draw_bit_for_bit(rng, monkeypatch, chunk):
    """However few resamples it holds at once, the bootstrap draws the indices of one [n_boot, n] draw (numpy
    directly) and gives the CI of the plain loop over them, for the vectorised median and any other statistic."""
    monkeypatch.setattr(stats, "BOOTSTRAP_CHUNK", chunk)
    for n, n_boot in ((1, 5), (64, 333), (501, 120)):
        x = rng.lognormal(size=n)
        y = rng.lognormal(size=n)
        x[rng.random(n) < 0.1] = np.nan
        idx = np.random.default_rng(11).integers(0, n, size=(n_boot, n))
        for arrays, statistic in (([x], stats.nanmedian), ([x, y], stats.loss_recovered)):
            reps = np.array([statistic(*(a[i] for a in arrays)) for i in idx])
            reps = reps[np.isfinite(reps)]
            q = (1.0 - 0.95) / 2.0  # the percentile as the bootstrap computes it (not the literal 0.025)
            expect = tuple(np.quantile(reps, [q, 1.0 - q])) if reps.size else (np.nan, np.nan)
            np.testing.assert_array_equal(stats.bootstrap(arrays, statistic, n_boot=n_boot, seed=11)[1:], expect)


def test_bootstrap_is_seeded_and_paired(rng):
    a = rng.normal(size=80)
    b = a + rng.normal(scale=0.01, size=80)
    r1 = stats.bootstrap([a, b], lambda u, v: np.mean(u - v), n_boot=300, seed=1)
    r2 = stats.bootstrap([a, b], lambda u, v: np.mean(u - v), n_boot=300, seed=1)
    r3 = stats.bootstrap([a, b], lambda u, v: np.mean(u - v), n_boot=300, seed=2)
    assert r1 == r2 and r1 != r3
    # paired resampling: the CI of the mean difference is as narrow as the pair noise, not as a's spread
    assert r1[2] - r1[1] < 0.02
    assert np.isnan(stats.bootstrap([a], np.mean, n_boot=0)[1])


def test_loss_recovered_direct_formula_with_missing_floor_sites():
    dce = np.array([0.1, 0.2, 0.0, 0.3])
    floor = np.array([10.0, np.nan, 12.0, 14.0])  # one site without the floor (no same-doc sibling)
    expected = 1 - pd.Series(dce).mean() / pd.Series(floor).mean()  # pandas skips NaN
    assert stats.loss_recovered(dce, floor) == pytest.approx(expected)
    assert np.isnan(stats.loss_recovered(dce, np.zeros(4)))


def test_spearman_against_ranks_and_t_distribution(rng):
    x = rng.normal(size=60)
    y = 0.3 * x + rng.normal(size=60)
    x[5] = np.nan
    got = stats.spearman(x, y)
    ok = ~np.isnan(x)
    rx = pd.Series(x[ok]).rank().to_numpy()
    ry = pd.Series(y[ok]).rank().to_numpy()
    rho = np.corrcoef(rx, ry)[0, 1]
    n = ok.sum()
    t = rho * np.sqrt((n - 2) / (1 - rho ** 2))
    p = 2 * sps.t.sf(abs(t), n - 2)
    assert got["n"] == 59
    assert got["rho"] == pytest.approx(rho)
    assert got["p"] == pytest.approx(p, rel=1e-6)


def test_paired_ratio_direct():
    a = np.array([2.0, 1.0, 3.0, np.nan, 4.0, 1.0])
    b = np.array([1.0, 2.0, 1.0, 1.0, 0.0, 0.5])
    got = stats.paired_ratio(a, b)
    ratios = [2.0, 0.5, 3.0, 2.0]  # site 3 missing, site 4 has b == 0
    assert got["median_ratio"] == pytest.approx(np.median(ratios))
    assert got["share_a_worse"] == pytest.approx(4 / 5)
    assert got["n"] == 5 and got["n_zero_denominator"] == 1


def test_wilcoxon_against_exact_enumeration(rng):
    a = rng.normal(size=10) + 0.4
    b = rng.normal(size=10)
    got = stats.wilcoxon(a, b)
    d = a - b
    ranks = sps.rankdata(np.abs(d))
    t_plus = ranks[d > 0].sum()
    t_obs = min(t_plus, ranks.sum() - t_plus)
    null = np.array([sum(r for r, s in zip(ranks, signs) if s) for signs in itertools.product([0, 1], repeat=10)])
    p = min(1.0, 2 * np.mean(null <= t_obs))
    assert got["statistic"] == pytest.approx(t_obs)
    assert got["p"] == pytest.approx(p, rel=1e-9)


def test_damage_per_energy_and_normalisation():
    kl = np.array([0.1, 0.4, 0.0, 0.2])
    e = np.array([1.0, 2.0, 0.0, np.nan])
    per = stats.damage_per_energy(kl, e)
    assert per[0] == pytest.approx(0.1) and per[1] == pytest.approx(0.1)
    assert np.isnan(per[2]) and np.isnan(per[3])
    kn = np.array([0.05, 0.05, 0.05, 0.05])
    en = np.array([1.0, 1.0, 1.0, 1.0])
    assert stats.normalised_damage(kl, e, kn, en) == pytest.approx(np.median([0.1, 0.1]) / 0.05)
    assert stats.normalised_damage(kn, en, kn, en) == pytest.approx(1.0)


def test_mixture_alpha_reproduces_the_writeup_arithmetic():
    # 2.9x for the residual, 35x for the cross-doc content anchor: alpha ~ 5.5-5.6 %
    assert stats.mixture_alpha(2.9, 35.0) == pytest.approx(1.9 / 34)
    assert stats.mixture_alpha(1.0, 35.0) == 0.0
    assert np.isnan(stats.mixture_alpha(2.0, 1.0))


def test_offset_reaching_floor():
    floor = np.array([1e-3, 1e-4, 1e-4, 1e-4, 1e-4])
    med = np.array([12.0, 0.01, 3e-4, 1.5e-4, 1e-4])
    assert stats.offset_reaching_floor(med, floor, tolerance=2.0) == 3
    assert stats.offset_reaching_floor(med, floor, tolerance=1.0) == 4
    assert stats.offset_reaching_floor(med, np.zeros(5), tolerance=2.0, min_kl=0.02) == 1
    assert stats.offset_reaching_floor(med, np.zeros(5), tolerance=2.0) is None


def test_quartiles_and_fve_equivalent(rng):
    x = rng.lognormal(size=41)
    q = stats.quartile_labels(x)
    sizes = np.bincount(q)
    assert sizes.sum() == 41 and sizes.max() - sizes.min() <= 1
    for i in range(3):
        assert x[q == i].max() <= x[q == i + 1].min()
    assert stats.fve_equivalent(np.array([0.01, 0.03]), 0.0579) == pytest.approx(1 - 0.02 / 0.0579)
    assert np.isnan(stats.fve_equivalent(np.array([0.01]), 0.0))
