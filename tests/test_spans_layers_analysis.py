"""Span and layer analysis (tables and figures) against independent pandas/numpy computations.

The patch frames are built by hand: several spans, negative offsets (positions inside the span),
a site without a same-document sibling, a site whose document ends early, a condition absent
from one span, and a headline floor whose ΔCE after the span is ~0 (loss recovered undefined).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from causal_kl import figures, tables
from causal_kl.conditions import (CLEAN, CROSS_DOC, FLOOR_CONDITIONS, GOLD, HEADLINE_FLOOR, LABELS, LOSS_FLOORS,
                                  MEASURED, NOISE, RECON, RECON_RAW, ROUTE_CONDITIONS, SAME_DOC, TABLE_ORDER)
from causal_kl.errors import CausalKLError

N_SITES = 12
NO_SIBLING = 3  # this site has no same-document resample
SHORT = 11  # this site's document ends after offset 20
SHORT_END = 20
SPANS = (1, 2, 4)
MISSING_IN_SPAN = (2, RECON_RAW)  # the span-2 run has no raw-norm rows
N_BOOT = 200
SEED = 5
SCALE = {GOLD: 1e-4, RECON: 0.06, RECON_RAW: 0.08, NOISE: 0.025, SAME_DOC: 10.0, CROSS_DOC: 12.0, "zero": 6.0,
         "mean": 5.0}


def _floor_dce(k: int, o: int, site: int, rng) -> float:
    """Headline floor ΔCE: large at 0; at offset 1 ~0 (±0.01, mean 0.001) for span 1 and clearly > 0 for longer spans;
    exactly 0 from offset 5 on (loss recovered undefined there)."""
    if o <= 0:
        return 12.0 + rng.normal()
    if o < 5:
        return (0.011 if site % 2 else -0.009) if k == 1 else 2.0 + 0.1 * rng.normal()
    return 0.0


def make_patch(k: int, seed: int = 0) -> pd.DataFrame:
    """One span run's PATCH rows (route "toy" + floors "")."""
    rng = np.random.default_rng(seed + k)
    rows = []
    for s in range(N_SITES):
        for o in range(-(k - 1), 32):
            if s == SHORT and o > SHORT_END:
                continue
            for c in (CLEAN, *MEASURED):
                if c == SAME_DOC and s == NO_SIBLING:
                    continue
                if (k, c) == MISSING_IN_SPAN:
                    continue
                if c == CLEAN:
                    kl, dce = 0.0, 0.0
                else:
                    decay = np.exp(-max(o, 0) / (0.5 * k))
                    kl = SCALE[c] * decay * rng.lognormal(0, 0.5)
                    if c == GOLD and s == 0:
                        kl = 0.0  # a KL of exactly 0 (drawn at the figure's floor)
                    if c == HEADLINE_FLOOR:
                        dce = _floor_dce(k, o, s, rng)
                    else:
                        dce = SCALE[c] * decay * rng.normal(1.0, 0.3) if o <= 0 else rng.normal(0, 0.01)
                rows.append({"site_id": s, "route": "toy" if c in ROUTE_CONDITIONS else "", "condition": c,
                             "offset": o, "kl": kl, "ce": 1.0 + dce, "delta_ce": dce, "span": k})
    df = pd.DataFrame(rows)
    return df.astype({"site_id": "int64", "offset": "int32", "kl": "float32", "ce": "float32",
                      "delta_ce": "float32", "span": "int32"})


@pytest.fixture(scope="module")
def patches() -> dict[int, pd.DataFrame]:
    return {k: make_patch(k) for k in SPANS}


@pytest.fixture(scope="module")
def spans(patches) -> pd.DataFrame:
    return tables.spans_table(patches, offsets=(-1, 0, 1, 5, 31), n_boot=N_BOOT, seed=SEED, ci=0.9)


def _sites_at(patch: pd.DataFrame, o: int) -> np.ndarray:
    return np.sort(patch.loc[patch["offset"] == o, "site_id"].unique())


def _aligned(patch: pd.DataFrame, o: int, c: str, value: str) -> np.ndarray:
    """Per site present at offset ``o`` (sorted), the condition's value (NaN where absent), by pandas alone."""
    ids = _sites_at(patch, o)
    sub = patch[(patch["offset"] == o) & (patch["condition"] == c)].set_index("site_id")[value]
    return sub.reindex(ids).to_numpy(dtype=np.float64)


def _manual_boot(arrays, stat, n_boot=N_BOOT, seed=SEED, ci=0.9):
    """numpy re-implementation of "resample sites jointly with default_rng(seed), percentile CI"."""
    n = len(arrays[0])
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    reps = np.array([stat(*(a[i] for a in arrays)) for i in idx], dtype=np.float64)
    reps = reps[np.isfinite(reps)]
    q = (1 - ci) / 2
    return tuple(np.quantile(reps, [q, 1 - q]))


def _np_nanmedian(x):
    x = x[np.isfinite(x)]
    return np.median(x) if x.size else np.nan


def _np_loss(d, f):
    den = np.mean(f)
    return 1 - np.mean(d) / den if den != 0 else np.nan


# -- offset_frame / span_conditions_table ---------------------------------------------------------


def test_offset_frame_against_pivot(patches):
    p = patches[4]
    for o in (-3, -1, 0, 1, 25):
        fr = tables.offset_frame(p, o)
        assert list(fr.columns) == ["site_id", *[f"{pre}_{c}" for c in MEASURED for pre in ("kl0", "dce0")]]
        want_ids = _sites_at(p, o)
        np.testing.assert_array_equal(fr["site_id"].to_numpy(), want_ids)
        for c in MEASURED:
            np.testing.assert_allclose(fr[f"kl0_{c}"].to_numpy(), _aligned(p, o, c, "kl"), rtol=0, equal_nan=True)
            np.testing.assert_allclose(fr[f"dce0_{c}"].to_numpy(), _aligned(p, o, c, "delta_ce"), equal_nan=True)
        same = fr.set_index("site_id")[f"kl0_{SAME_DOC}"]
        assert np.isnan(same.loc[NO_SIBLING]) and same.drop(NO_SIBLING).notna().all()
    assert SHORT not in tables.offset_frame(p, 25)["site_id"].to_numpy()
    assert len(tables.offset_frame(p, -5)) == 0  # a span of 4 has offsets -3 .. -1 inside it only
    fr2 = tables.offset_frame(patches[2], 0)
    assert fr2[f"kl0_{RECON_RAW}"].isna().all()  # a condition the run lacks: a NaN column


def test_offset_frame_refuses_mixed_spans(patches):
    with pytest.raises(CausalKLError, match="more than one row"):
        tables.offset_frame(pd.concat([patches[1], patches[2]]), 0)


def test_span_conditions_table_against_groupby(patches):
    p = patches[2]
    t = tables.span_conditions_table(p, n_boot=N_BOOT, seed=SEED).set_index("condition")
    p0 = p[p["offset"] == 0]
    med = p0.groupby("condition")["kl"].median()
    mean = p0.groupby("condition")["delta_ce"].mean()
    for c in TABLE_ORDER:
        sub = p0[p0["condition"] == c]
        assert t.loc[c, "n"] == sub["site_id"].nunique()
        if (2, c) == MISSING_IN_SPAN:
            assert t.loc[c, "n"] == 0 and np.isnan(t.loc[c, "kl0_median"])
            continue
        assert t.loc[c, "kl0_median"] == pytest.approx(med[c], rel=1e-6)
        assert t.loc[c, "kl0_median_lo"] <= t.loc[c, "kl0_median"] <= t.loc[c, "kl0_median_hi"]
        for f in LOSS_FLOORS:
            assert t.loc[c, f"loss_recovered_vs_{f}"] == pytest.approx(1 - mean[c] / mean[f], rel=1e-5, abs=1e-7)
    # the offset-0 row after the span, not a position inside it
    inside = p[(p["offset"] == -1) & (p["condition"] == RECON)]["kl"].median()
    assert t.loc[RECON, "kl0_median"] != pytest.approx(inside)


# -- spans_table ----------------------------------------------------------------------------------


def test_spans_table_rows_and_n(spans, patches):
    want = [(k, c) for k in SPANS for c in TABLE_ORDER if (k, c) != MISSING_IN_SPAN]
    assert list(zip(spans["span"], spans["condition"])) == want
    assert (spans["label"] == spans["condition"].map(LABELS)).all()
    for (k, c), row in spans.set_index(["span", "condition"]).iterrows():
        p = patches[k]
        n = p[(p["offset"] == 0) & (p["condition"] == c)]["site_id"].nunique()
        assert row["n_sites"] == n == (N_SITES - 1 if c == SAME_DOC else N_SITES)


def test_spans_table_medians_and_cis_match_manual_resampling(spans, patches):
    s = spans.set_index(["span", "condition"])
    for k in SPANS:
        p = patches[k]
        for o in (-1, 0, 1, 31):
            for c in (GOLD, RECON, SAME_DOC, CROSS_DOC):
                row = s.loc[(k, c)]
                key = f"kl_median_at_{o}"
                if k == 1 and o == -1:  # no position inside a span of 1
                    assert np.isnan(row[key]) and np.isnan(row[f"{key}_lo"])
                    continue
                x = _aligned(p, o, c, "kl")
                grp = p[(p["offset"] == o) & (p["condition"] == c)]["kl"].astype(np.float64)
                assert row[key] == pytest.approx(grp.median(), rel=1e-9)
                lo, hi = _manual_boot([x], _np_nanmedian)
                assert (row[f"{key}_lo"], row[f"{key}_hi"]) == pytest.approx((lo, hi), rel=1e-9)
                assert row[f"{key}_lo"] <= row[key] <= row[f"{key}_hi"]
    # fewer sites at offset 31 (a document ended early): the median is over the sites still there
    p = patches[1]
    g31 = p[(p["offset"] == 31) & (p["condition"] == RECON)]
    assert g31["site_id"].nunique() == N_SITES - 1
    assert s.loc[(1, RECON), "kl_median_at_31"] == pytest.approx(g31["kl"].astype(np.float64).median())


def test_spans_table_loss_recovered_formula_and_definedness(spans, patches):
    s = spans.set_index(["span", "condition"])
    for k in SPANS:
        p = patches[k]
        for o in (0, 1):
            fl = p[(p["offset"] == o) & (p["condition"] == HEADLINE_FLOOR)][["site_id", "delta_ce"]]
            for c in (GOLD, RECON, NOISE, SAME_DOC, "zero"):
                d = p[(p["offset"] == o) & (p["condition"] == c)][["site_id", "delta_ce"]]
                both = d.merge(fl, on="site_id", suffixes=("", "_f")).sort_values("site_id")
                a = both["delta_ce"].to_numpy(np.float64)
                b = both["delta_ce_f"].to_numpy(np.float64)
                want = 1 - a.mean() / b.mean()
                row = s.loc[(k, c)]
                assert row[f"loss_recovered_at_{o}"] == pytest.approx(want, rel=1e-9)
                if o == 0:
                    lo, hi = _manual_boot([a, b], _np_loss)
                    assert (row["loss_recovered_at_0_lo"], row["loss_recovered_at_0_hi"]) == pytest.approx((lo, hi))
            # definedness: the floor's mean ΔCE has a bootstrap CI lower bound above 0 (over the offset's sites)
            f_all = _aligned(p, o, HEADLINE_FLOOR, "delta_ce")
            lo_f, _ = _manual_boot([f_all], lambda x: np.mean(x[np.isfinite(x)]))
            assert bool(s.loc[(k, RECON), f"loss_recovered_defined_at_{o}"]) == (lo_f > 0)
    assert spans.groupby("span")["loss_recovered_defined_at_0"].all().all()
    d1 = spans.groupby("span")["loss_recovered_defined_at_1"].all()
    assert not d1.loc[1] and d1.loc[2] and d1.loc[4]  # span 1: the floor does ~no damage one token later
    assert not spans["loss_recovered_defined_at_5"].any()
    assert spans["loss_recovered_at_5"].isna().all()  # the floor's mean ΔCE is exactly 0: no ratio
    assert (s.xs(CROSS_DOC, level="condition")["loss_recovered_at_0"].abs() < 1e-12).all()


def test_spans_table_default_offsets_columns(patches):
    t = tables.spans_table({1: patches[1]}, n_boot=0)
    for o in (0, 1, 5, 31):
        for suf in ("", "_lo", "_hi"):
            assert f"kl_median_at_{o}{suf}" in t and f"loss_recovered_at_{o}{suf}" in t
        assert f"loss_recovered_defined_at_{o}" in t
        assert not t[f"loss_recovered_defined_at_{o}"].any()  # no bootstrap: no CI, so never "defined"
    assert t["kl_median_at_0_lo"].isna().all()


# -- layers_table ---------------------------------------------------------------------------------


def _cond_table(base: float, floor_lo: float = 0.5) -> pd.DataFrame:
    """A hand-made conditions table: distinct numbers per condition derived from ``base``."""
    key = f"loss_recovered_vs_{HEADLINE_FLOOR}"
    rows = []
    for i, c in enumerate(TABLE_ORDER):
        v = base + i
        rows.append({"condition": c, "label": LABELS[c], "n": 100 + i, "kl0_median": v, "kl0_median_lo": v - 0.1,
                     "kl0_median_hi": v + 0.1, "dce0_mean": 1.0,
                     "dce0_mean_lo": floor_lo if c == HEADLINE_FLOOR else 0.5,
                     key: v / 100, f"{key}_lo": v / 100 - 0.01, f"{key}_hi": v / 100 + 0.01})
    return pd.DataFrame(rows)


def test_layers_table_rows_and_values():
    conds = {(10, "b"): _cond_table(10.0), (10, "a"): _cond_table(20.0), (3, "a"): _cond_table(30.0, floor_lo=-0.1)}
    fve = {(10, "b"): 0.7, (10, "a"): None, (3, "a"): 0.5}
    t = tables.layers_table(conds, fve)
    assert list(t.columns) == list(tables.LAYER_COLUMNS)
    route_rows = [(L, r, c) for L, r in sorted(conds) for c in ROUTE_CONDITIONS]
    floor_rows = [(L, "", c) for L in (3, 10) for c in FLOOR_CONDITIONS]
    order = {c: i for i, c in enumerate(TABLE_ORDER)}
    want = sorted(route_rows + floor_rows, key=lambda x: (x[0], x[1], order[x[2]]))
    assert list(zip(t["layer"], t["route"], t["condition"])) == want
    assert len(t) == 3 * 3 + 2 * 5
    key = f"loss_recovered_vs_{HEADLINE_FLOOR}"
    for _, row in t.iterrows():
        src_route = row["route"] or "a"  # floors: from one route's table of the layer (the first by name)
        src = conds[(row["layer"], src_route)].set_index("condition").loc[row["condition"]]
        assert row["label"] == LABELS[row["condition"]]
        assert row["n"] == src["n"]
        for col in ("kl0_median", "kl0_median_lo", "kl0_median_hi"):
            assert row[col] == src[col]
        for suf in ("", "_lo", "_hi"):
            assert row[f"loss_recovered{suf}"] == src[f"{key}{suf}"]
        f = fve.get((row["layer"], row["route"]))
        assert np.isnan(row["fve"]) if (row["route"] == "" or f is None) else row["fve"] == f
        assert row["loss_recovered_defined"] == (row["layer"] == 10)
    assert not (t["route"] == "").groupby(t["layer"]).sum().ne(len(FLOOR_CONDITIONS)).any()


def test_layers_table_from_real_conditions_tables(patches):
    """End to end: conditions tables computed from two span runs standing in for two layers."""
    conds = {(L, "toy"): tables.span_conditions_table(patches[k], n_boot=N_BOOT, seed=SEED)
             for L, k in ((5, 1), (9, 4))}
    t = tables.layers_table(conds, {(5, "toy"): 0.8, (9, "toy"): 0.6}).set_index(["layer", "route", "condition"])
    for L, k in ((5, 1), (9, 4)):
        p0 = patches[k][patches[k]["offset"] == 0]
        assert t.loc[(L, "toy", RECON), "kl0_median"] == pytest.approx(p0[p0.condition == RECON]["kl"].median())
        assert t.loc[(L, "", CROSS_DOC), "kl0_median"] == pytest.approx(p0[p0.condition == CROSS_DOC]["kl"].median())
        m = p0.groupby("condition")["delta_ce"].mean()
        assert t.loc[(L, "toy", NOISE), "loss_recovered"] == pytest.approx(1 - m[NOISE] / m[HEADLINE_FLOOR], rel=1e-5)
        assert t.loc[(L, "", SAME_DOC), "n"] == N_SITES - 1
    assert bool(t["loss_recovered_defined"].all())


# -- figures --------------------------------------------------------------------------------------


def _files_ok(tmp_path, stem):
    png, svg = tmp_path / f"{stem}.png", tmp_path / f"{stem}.svg"
    raw = png.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) > 2000
    assert "<svg" in svg.read_text()


def _series(ax):
    """label -> (x, y) of each error-bar series on ``ax``."""
    out = {}
    for cont in ax.containers:
        line = cont.lines[0]
        out[cont.get_label()] = (np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float))
    return out


def test_fig_spans_panels_lines_and_files(spans, tmp_path):
    kl_floor = 1e-6
    offsets = (1, 5, 31)
    fig = figures.fig_spans(spans, offsets=offsets, kl_floor=kl_floor)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == len(offsets) + 1
    conds = [c for c in TABLE_ORDER if c in set(spans["condition"])]
    for ax, o in zip(axes, offsets):
        ser = _series(ax)
        assert set(ser) == {LABELS[c] for c in conds}
        assert ax.get_yscale() == "log" and ax.get_xscale() == "log"
        assert [int(t) for t in ax.get_xticks()] == list(SPANS)
        assert "span's last position" in ax.get_title()
        for c in conds:
            sub = spans[spans["condition"] == c].sort_values("span")
            x, y = ser[LABELS[c]]
            np.testing.assert_array_equal(x, sub["span"].to_numpy())
            np.testing.assert_allclose(y, np.clip(sub[f"kl_median_at_{o}"].to_numpy(float), kl_floor, None))
    assert axes[0].containers[0].lines[0].get_ydata().min() >= kl_floor  # gold KL 0 at site 0 does not vanish
    lr = _series(axes[-1])
    # offset 0 defined everywhere, offset 1 only for spans 2 and 4, offset 5 nowhere (and 31 nowhere)
    for c in conds:
        x0, y0 = lr[f"{LABELS[c]}, offset 0"]
        sub = spans[spans["condition"] == c].sort_values("span")
        np.testing.assert_array_equal(x0, sub["span"].to_numpy())
        np.testing.assert_allclose(y0, sub["loss_recovered_at_0"].to_numpy(float))
        x1, _ = lr[f"{LABELS[c]}, offset 1"]
        np.testing.assert_array_equal(x1, sub.loc[sub["span"] > 1, "span"].to_numpy())
    assert not any(lab.endswith(("offset 5", "offset 31")) for lab in lr)
    notes = axes[-1].get_xlabel()
    assert "undefined" in notes and "offset 1: k = 1\n" in notes and "offset 5: k = 1, 2, 4" in notes
    assert "span's last position" in fig._suptitle.get_text()
    figures.save(fig, tmp_path / "spans.png", tmp_path / "spans.svg", dpi=50)
    _files_ok(tmp_path, "spans")


def test_fig_layers_panels_lines_and_files(tmp_path):
    conds = {(L, r): _cond_table(b, floor_lo=-0.1 if (L, r) == (3, "b") else 0.5)
             for (L, r), b in {(3, "a"): 1.0, (3, "b"): 2.0, (7, "a"): 3.0, (7, "b"): 4.0, (12, "a"): 5.0}.items()}
    fve = {(3, "a"): 0.5, (3, "b"): 0.6, (7, "a"): 0.7, (7, "b"): None, (12, "a"): 0.9}
    layers = tables.layers_table(conds, fve)
    fig = figures.fig_layers(layers)
    a1, a2, a3 = [ax for ax in fig.axes if ax.get_visible()]
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 3
    s1 = _series(a1)
    assert set(s1) == {f"a: {LABELS[RECON]}", f"b: {LABELS[RECON]}", *(LABELS[c] for c in FLOOR_CONDITIONS)}
    assert a1.get_yscale() == "log"
    x, y = s1[f"a: {LABELS[RECON]}"]
    want = layers[(layers.route == "a") & (layers.condition == RECON)]
    np.testing.assert_array_equal(x, want["layer"].to_numpy())
    np.testing.assert_allclose(y, want["kl0_median"].to_numpy())
    x, _ = s1[LABELS[CROSS_DOC]]
    np.testing.assert_array_equal(x, [3, 7, 12])
    s2 = _series(a2)
    assert set(s2) == {"a", "b"}
    np.testing.assert_array_equal(s2["b"][0], [7])  # layer 3 of route b: floor CI not above 0, omitted
    np.testing.assert_allclose(s2["a"][1], want["loss_recovered"].to_numpy())
    assert "undefined" in a2.get_xlabel() and "b: L = 3" in a2.get_xlabel()
    fve_lines = {ln.get_label(): ln for ln in a3.get_lines()}
    assert set(fve_lines) == {"a", "b"}
    np.testing.assert_allclose(fve_lines["a"].get_ydata(), [0.5, 0.7, 0.9])
    assert np.isnan(fve_lines["b"].get_ydata()[1])
    assert [int(t) for t in a3.get_xticks()] == [3, 7, 12]
    figures.save(fig, tmp_path / "layers.png", tmp_path / "layers.svg", dpi=50)
    _files_ok(tmp_path, "layers")


def test_fig3_inside_span_keyword_keeps_the_default(patches):
    p = patches[4]
    off = p[p["condition"] != CLEAN].groupby(["offset", "condition"])["kl"].median().unstack().reset_index()
    default = figures.fig3_kl_by_offset({"toy": off})
    ax = default.axes[0]
    assert ax.get_xlim()[0] == -0.5 and not ax.patches
    assert len(ax.get_lines()) == len(MEASURED)
    spanned = figures.fig3_kl_by_offset({"toy": off}, inside_span=True)
    ax2 = spanned.axes[0]
    assert ax2.get_xlim()[0] == -3.5 and len(ax2.patches) == 1  # the shaded band over offsets -3 .. -1
    assert "inside the span" in ax2.get_xlabel()
    np.testing.assert_array_equal(ax2.get_lines()[0].get_xdata(), off["offset"].to_numpy())
    import matplotlib.pyplot as plt
    plt.close(default)
    plt.close(spanned)
