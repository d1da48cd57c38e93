"""Tables and statistic records on a synthetic run, against direct pandas/numpy computations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from causal_kl import conditions, reference
from causal_kl.io import arrow_to_vectors, read_parquet
from synthetic_results import build_outputs, make_results


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("analysis")
    R = make_results(root, routes=("toy", "toy2"))
    files = build_outputs(R, routes=("toy", "toy2"))
    return R, files, None


def _patch(R: Path, route: str) -> pd.DataFrame:
    """The floors' and the route's patch rows as pandas reads the two files (not through causal_kl.io)."""
    p = pd.concat([pd.read_parquet(R / "span1/patch/floors.parquet"), pd.read_parquet(R / f"span1/patch/{route}.parquet")])
    return p.astype({"route": str, "condition": str})


def _patch0(R: Path, route: str) -> pd.DataFrame:
    p = _patch(R, route)
    return p[p["offset"] == 0]


def test_error_norms_against_gold_vectors(run):
    R, _, _ = run
    en = pd.read_parquet(R / "analysis/error_norms.parquet").set_index("site_id")
    t = read_parquet(R / "stored_gold.parquet")
    g = dict(zip(t["site_id"].to_pylist(), arrow_to_vectors(t["activation"]).astype(np.float64)))
    ch = pd.read_parquet(R / "conditions/choices.parquet").set_index("site_id")
    mean = np.stack(list(g.values())).mean(axis=0)
    for s, row in ch.iterrows():
        assert en.loc[s, "zero"] == pytest.approx(np.linalg.norm(g[s]), rel=1e-5)
        assert en.loc[s, "mean"] == pytest.approx(np.linalg.norm(mean - g[s]), rel=1e-4)
        assert en.loc[s, "resample_cross_doc"] == pytest.approx(np.linalg.norm(g[row.cross_doc_source] - g[s]), rel=1e-5)
        if row.same_doc_source < 0:
            assert np.isnan(en.loc[s, "resample_same_doc"])
        else:
            assert en.loc[s, "resample_same_doc"] == pytest.approx(np.linalg.norm(g[row.same_doc_source] - g[s]), rel=1e-5)


def test_conditions_table_against_pandas(run):
    R, files, _ = run
    df = pd.read_csv(files["route_files"]["3"]["toy"]["conditions"]).set_index("condition")
    p = _patch0(R, "toy")
    med = p.groupby("condition")["kl"].median()
    mean_dce = p.groupby("condition")["delta_ce"].mean()
    for c in conditions.TABLE_ORDER:
        sub = p[p["condition"] == c]
        assert df.loc[c, "n"] == sub["site_id"].nunique()
        assert df.loc[c, "kl0_median"] == pytest.approx(med[c], rel=1e-5)
        assert df.loc[c, "kl0_p90"] == pytest.approx(np.quantile(sub["kl"].astype(float), 0.9), rel=1e-5)
        assert df.loc[c, "kl0_median_lo"] <= df.loc[c, "kl0_median"] <= df.loc[c, "kl0_median_hi"]
        for f in conditions.LOSS_FLOORS:
            want = 1 - mean_dce[c] / mean_dce[f]
            assert df.loc[c, f"loss_recovered_vs_{f}"] == pytest.approx(want, rel=1e-4, abs=1e-6)
    assert df.loc["resample_same_doc", "n"] < df.loc["resample_cross_doc", "n"]  # a site with no sibling
    assert "kl0_median_published" not in df.columns


def test_quartile_table_against_pandas(run):
    R, files, _ = run
    q = pd.read_csv(files["route_files"]["3"]["toy"]["quartiles"])
    geo = pd.read_parquet(R / "geometry/toy.parquet").set_index("site_id")
    p = _patch0(R, "toy")
    kl = p.pivot_table(index="site_id", columns="condition", values="kl")
    d = geo["direction_mse"].sort_values()
    chunks = np.array_split(d.index.to_numpy(), 4)
    var = json.loads((R / "geometry/toy.json").read_text())["variance"]
    for i, ids in enumerate(chunks):
        row = q.iloc[i]
        assert row["n"] == len(ids)
        assert row["dmse_min"] == pytest.approx(d.loc[ids].min(), rel=1e-5)
        assert row["fve_equiv"] == pytest.approx(1 - d.loc[ids].mean() / var, rel=1e-6)
        assert row["kl_recon_median"] == pytest.approx(kl.loc[ids, "recon_goldnorm"].median(), rel=1e-5)
        ratio = (kl.loc[ids, "recon_goldnorm"] / kl.loc[ids, "noise_matched"]).median()
        assert row["ratio_median"] == pytest.approx(ratio, rel=1e-5)


def test_offsets_table_against_groupby(run):
    R, files, _ = run
    o = pd.read_csv(files["route_files"]["3"]["toy"]["offsets"]).set_index("offset")
    p = _patch(R, "toy")
    want = p.groupby(["offset", "condition"])["kl"].median().unstack()
    assert list(o.index) == list(range(32))
    for c in conditions.TABLE_ORDER:
        np.testing.assert_allclose(o[c].to_numpy(), want[c].to_numpy(), rtol=1e-5)
    assert o.loc[25, "n_sites"] < o.loc[0, "n_sites"]  # documents ending early


def test_token_class_table(run):
    R, files, _ = run
    t = pd.read_csv(files["route_files"]["3"]["toy"]["token_classes"])
    ps = pd.read_parquet(R / "analysis/toy/per_site.parquet")
    sites = pd.read_parquet(R.parent / "sites.parquet").set_index("site_id")
    text = ps["site_id"].map(sites["token"])  # the token text the sites stage decoded
    assert text.str.fullmatch(r"\s*\d+\s*").any() and not text.str.fullmatch(r"\s*\d+\s*").all()
    digit = text.str.fullmatch(r"\s*\d+\s*").to_numpy()
    row = t[(t["token_class"] == "digit") & t["member"]].iloc[0]
    assert row["n"] == digit.sum()
    rest = t[(t["token_class"] == "digit") & ~t["member"]].iloc[0]
    assert rest["kl0_median_recon_goldnorm"] == pytest.approx(ps.loc[~digit, "kl0_recon_goldnorm"].median(), rel=1e-5)  # CSV: 6 digits
    geo_var = json.loads((R / "geometry/toy.json").read_text())["variance"]
    assert row["fve_equiv"] == pytest.approx(1 - ps.loc[digit, "direction_mse"].mean() / geo_var) if digit.any() \
        else np.isnan(row["fve_equiv"])
    assert set(t["token_class"]) == {"digit", "space"}  # the configured class is added to the write-up's


def test_statistics_records(run):
    R, _, _ = run
    from scipy import stats as sps

    st = json.loads((R / "stats/toy.json").read_text())
    ps = pd.read_parquet(R / "analysis/toy/per_site.parquet")
    rho = sps.spearmanr(ps["direction_mse"], ps["kl0_recon_goldnorm"]).statistic
    assert st["correlation"]["dmse_vs_kl0"]["rho"] == pytest.approx(rho)
    w = sps.wilcoxon(ps["kl0_recon_goldnorm"], ps["kl0_noise_matched"])
    assert st["paired"]["recon_goldnorm"]["wilcoxon_p"] == pytest.approx(w.pvalue)
    share = (ps["kl0_recon_goldnorm"] > ps["kl0_noise_matched"]).mean()
    assert st["paired"]["recon_goldnorm"]["share_a_worse"] == pytest.approx(share)
    noise = (ps["kl0_noise_matched"] / ps["noise_norm"] ** 2).median()
    for c in ("recon_goldnorm", "resample_same_doc", "resample_cross_doc"):
        s = (ps[f"kl0_{c}"] / ps[f"err_{c}"] ** 2).median() / noise
        assert st["energy"]["normalised"][c]["value"] == pytest.approx(s, rel=1e-6)
    s_r = st["energy"]["normalised"]["recon_goldnorm"]["value"]
    s_c = st["energy"]["normalised"]["resample_cross_doc"]["value"]
    assert st["energy"]["alpha"]["resample_cross_doc"]["recon_goldnorm"] == pytest.approx((s_r - 1) / (s_c - 1))
    assert st["floor_offsets"]["first_offset_at_floor"]["resample_cross_doc"] is not None
    assert st["headline"]["n_sites"] == len(ps)


def test_with_reference_columns():
    measured = pd.DataFrame({"condition": ["gold", "zero"], "kl0_median": [0.001, 7.0],
                             "kl0_median_lo": [0.0, 6.0], "kl0_median_hi": [0.002, 8.0], "n": [10, 10]})
    ref = reference.load_reference()
    out = reference.with_reference(measured, ref["conditions"], "condition")
    cols = list(out.columns)
    assert cols.index("kl0_median_published") == cols.index("kl0_median_hi") + 1
    assert out.loc[1, "kl0_median_published"] == pytest.approx(6.5473)
    assert out.loc[1, "kl0_median_diff"] == pytest.approx(7.0 - 6.5473)
    assert "n_published" not in cols
    assert reference.with_reference(measured, None, "condition").equals(measured)


def test_reference_files_hold_the_writeup_numbers():
    ref = reference.load_reference()
    c = ref["conditions"].set_index("condition")
    assert c.loc["recon_goldnorm", "kl0_median"] == pytest.approx(0.0657)
    assert c.loc["resample_cross_doc", "dce0_median"] == pytest.approx(12.007)
    q = ref["quartiles"].set_index("quartile")
    assert q.loc["Q4", "ratio_median"] == pytest.approx(1.05)
    assert ref["stats"]["correlation"]["dmse_vs_kl0"]["rho"] == pytest.approx(-0.025)
    assert ref["stats"]["energy"]["normalised"]["resample_same_doc"]["value"] == pytest.approx(42)


def test_headline_says_when_loss_recovered_is_undefined():
    """A floor whose mean ΔCE@0 is not above 0 beyond its CI makes loss recovered no score; the report says so."""
    from causal_kl import records
    from causal_kl.report import _cards

    rows = []
    for c in conditions.TABLE_ORDER:
        row = {"condition": c, "n": 100, "kl0_median": 0.1, "dce0_mean": 0.5, "dce0_mean_lo": 0.4, "dce0_mean_hi": 0.6}
        for f in conditions.LOSS_FLOORS:
            row.update({f"loss_recovered_vs_{f}": 0.9, f"loss_recovered_vs_{f}_lo": 0.85, f"loss_recovered_vs_{f}_hi": 0.95})
        rows.append(row)
    table = pd.DataFrame(rows)
    ok = records.headline(table, 0.8)
    assert ok[f"loss_recovered_defined_vs_{conditions.CROSS_DOC}"] is True
    assert "undefined" not in _cards({"headline": ok}) and "[85.0%, 95.0%]" in _cards({"headline": ok})
    table.loc[table.condition == conditions.CROSS_DOC, ["dce0_mean", "dce0_mean_lo"]] = [0.01, -0.02]
    bad = records.headline(table, 0.8)
    assert bad[f"loss_recovered_defined_vs_{conditions.CROSS_DOC}"] is False
    assert bad[f"loss_recovered_defined_vs_{conditions.ZERO}"] is True
    assert "undefined" in _cards({"headline": bad})


def test_alpha_carries_a_bootstrap_ci(run):
    R, _, _ = run
    st = json.loads((R / "stats/toy.json").read_text())
    ci = st["energy"]["alpha_ci"]["resample_cross_doc"]["recon_goldnorm"]
    a = st["energy"]["alpha"]["resample_cross_doc"]["recon_goldnorm"]
    assert ci["lo"] <= a <= ci["hi"] and ci["defined"] is True  # the synthetic resamples are far above noise


def test_error_norms_a_block_at_a_time_equal_numpy_on_every_row(monkeypatch):
    """Error norms taken a few rows at a time are numpy's norms of the whole float64 golds, bit for bit."""
    import pyarrow as pa

    from causal_kl import per_site

    monkeypatch.setattr(per_site, "VALUES_AT_ONCE", 7 * 33)  # blocks of 7 rows
    rng = np.random.default_rng(3)
    ids = np.arange(100, 150, dtype=np.int64)
    gold = rng.normal(size=(50, 33)).astype(np.float32)
    mean = gold.mean(axis=0)
    same = np.where(np.arange(50) % 5 == 0, -1, ids[(np.arange(50) + 1) % 50])
    cross = ids[rng.integers(0, 50, size=50)]
    choices = pa.table({"site_id": ids[::-1], "same_doc_source": same[::-1], "cross_doc_source": cross[::-1]})
    got = per_site.error_norms(ids, gold, choices, mean)
    g = gold.astype(np.float64)
    np.testing.assert_array_equal(got["zero"], np.linalg.norm(g, axis=1))
    np.testing.assert_array_equal(got["mean"], np.linalg.norm(g - mean.astype(np.float64), axis=1))
    row = {int(s): i for i, s in enumerate(ids)}
    want_same = [np.linalg.norm(g[row[int(s)]] - g[i]) if s >= 0 else np.nan for i, s in enumerate(same)]
    np.testing.assert_array_equal(got["resample_same_doc"], want_same)
    np.testing.assert_array_equal(got["resample_cross_doc"], [np.linalg.norm(g[row[int(s)]] - g[i])
                                                               for i, s in enumerate(cross)])
    bad = choices.set_column(2, "cross_doc_source", pa.array(np.full(50, 999), pa.int64()))
    with pytest.raises(Exception, match="source site 999 has no gold"):
        per_site.error_norms(ids, gold, bad, mean)
