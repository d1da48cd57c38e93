"""Geometry and FVE against direct numpy/scipy computations, from the parquet files the rules write."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import cosine

from causal_kl.contracts import RECON
from causal_kl.errors import CausalKLError
from causal_kl.gate import floor_gate
from causal_kl.geometry import site_geometry
from causal_kl.io import write_parquet
from causal_kl.jobs.recon import geometry
from run_files import PROVENANCE, base_config, make_run


def compute_geometry(recon, gold, sites, table, summary, route, config):
    """The geometry rule's job on these files; returns the summary it wrote."""
    geometry(recon=str(recon), gold=str(gold), sites=str(sites), table=str(table), summary=str(summary),
             route_entry=config["routes"][route], variance_constant=config["geometry"]["variance_constant"],
             layer="3", route=route, provenance=PROVENANCE)
    return json.loads(summary.read_text())


def _write_recon(path, vectors):
    write_parquet(path, {"site_id": np.arange(len(vectors)), "reconstruction": vectors}, RECON, vectors.shape[1])


def test_site_geometry_matches_direct_computation():
    rng = np.random.default_rng(1)
    g = rng.standard_normal((20, 12))
    r = g * rng.uniform(0.2, 3.0, (20, 1)) + rng.standard_normal((20, 12)) * 0.5
    geo = site_geometry(g, r)
    d = g.shape[1]
    for i in range(len(g)):
        c = 1 - cosine(g[i], r[i])
        gs = g[i] / np.linalg.norm(g[i]) * np.sqrt(d)
        rs = r[i] / np.linalg.norm(r[i]) * np.sqrt(d)
        assert geo.cos[i] == pytest.approx(c, abs=1e-12)
        assert geo.direction_mse[i] == pytest.approx(np.mean((gs - rs) ** 2), abs=1e-12)
        assert geo.direction_mse[i] == pytest.approx(2 * (1 - c), abs=1e-12)
        assert geo.gold_norm[i] == pytest.approx(np.sqrt(np.sum(g[i] ** 2)))
        assert geo.recon_norm[i] == pytest.approx(np.sqrt(np.sum(r[i] ** 2)))
        goldnorm = r[i] / np.linalg.norm(r[i]) * np.linalg.norm(g[i])
        assert geo.noise_norm[i] == pytest.approx(np.sqrt(np.sum((goldnorm - g[i]) ** 2)))


def test_fve_recomputed_independently_from_parquet(tmp_path):
    sites_path, gold_path, sites, gold = make_run(tmp_path, d=24)
    recon = gold + np.random.default_rng(2).standard_normal(gold.shape).astype(np.float32) * 0.8
    # rows in reverse site order: the order of the file must not matter
    write_parquet(tmp_path / "recon.parquet", {"site_id": np.arange(len(recon))[::-1].copy(), "reconstruction": recon[::-1].copy()},
                  RECON, recon.shape[1])
    config = base_config(tmp_path, {"r": {"kind": "file", "path": "x.npy"}})
    config["geometry"]["variance_constant"] = 0.05
    summary = compute_geometry(tmp_path / "recon.parquet", gold_path, sites_path, tmp_path / "g.parquet", tmp_path / "g.json",
                               "r", config)

    # independent: read the files with pandas, scale golds to sqrt(d), Var = sum of per-dim variances / d
    g = np.stack(pd.read_parquet(gold_path).sort_values("site_id")["activation"].to_numpy()).astype(np.float64)
    rt = pd.read_parquet(tmp_path / "recon.parquet").sort_values("site_id")
    r = np.stack(rt["reconstruction"].to_numpy()).astype(np.float64)
    d = g.shape[1]
    gs = g / np.linalg.norm(g, axis=1, keepdims=True) * np.sqrt(d)
    rs = r / np.linalg.norm(r, axis=1, keepdims=True) * np.sqrt(d)
    var = sum(np.var(gs[:, j]) for j in range(d)) / d
    dmse = np.mean((gs - rs) ** 2, axis=1)
    fve = 1 - dmse.mean() / var

    on_disk = json.loads((tmp_path / "g.json").read_text())
    assert on_disk["fve"] == pytest.approx(fve, abs=1e-9) and summary["fve"] == on_disk["fve"]
    assert on_disk["variance"] == pytest.approx(var, abs=1e-12)
    assert on_disk["n"] == len(g) and on_disk["recheck"] is None
    assert on_disk["variance_difference"] == pytest.approx(var - 0.05)
    assert on_disk["fve_at_variance_constant"] == pytest.approx(1 - dmse.mean() / 0.05)
    geo = pd.read_parquet(tmp_path / "g.parquet")
    assert list(geo.site_id) == list(range(len(g)))
    np.testing.assert_allclose(geo.direction_mse, dmse, atol=1e-10)


def test_expected_fve_mismatch_stops_with_one_line(tmp_path):
    sites_path, gold_path, _, gold = make_run(tmp_path)
    _write_recon(tmp_path / "recon.parquet", gold * 2.0)  # perfect direction: FVE = 1
    config = base_config(tmp_path, {"r": {"kind": "file", "path": "x.npy", "expected_fve": 0.7749}})
    with pytest.raises(CausalKLError) as e:
        compute_geometry(tmp_path / "recon.parquet", gold_path, sites_path, tmp_path / "g.parquet", tmp_path / "g.json", "r", config)
    msg = str(e.value)
    assert "\n" not in msg and "expected_fve" in msg and "1.0000" in msg and "0.7749" in msg and "Fix:" in msg
    assert not (tmp_path / "g.json").exists()
    config["routes"]["r"]["expected_fve"] = 1.0
    summary = compute_geometry(tmp_path / "recon.parquet", gold_path, sites_path, tmp_path / "g.parquet", tmp_path / "g.json", "r", config)
    assert summary["recheck"]["pass"] is True


def test_floor_gate_checks():
    config = base_config(None, {"a": {"kind": "file", "path": "x", "expected_fve": 0.775}, "b": {"kind": "file", "path": "y"}})
    routes = config["routes"]
    patch = pd.DataFrame({"site_id": [0, 1, 2, 0], "route": ["", "", "", ""], "condition": ["gold"] * 3 + ["zero"],
                          "offset": [0, 0, 0, 0], "kl": [1e-4, 4e-4, 9e-4, 5.0]})
    geo = {"a": {"route": "a", "fve": 0.7749}, "b": {"route": "b", "fve": 0.5}}
    gate = floor_gate({"min_cos": 0.9999}, patch, geo, 0.999, 0.01, routes)
    by = {(c["name"], c.get("route")): c for c in gate["checks"]}
    assert by[("reextract", None)]["status"] == "✓"
    assert by[("gold_repatch", None)]["value"] == pytest.approx(np.median([1e-4, 4e-4, 9e-4]))
    assert by[("gold_repatch", None)]["status"] == "✓"
    assert by[("fve_recheck", "a")]["status"] == "✓" and by[("fve_recheck", "b")]["status"] == "–"
    assert gate["pass"] is True and "✓" in gate["line"]

    bad = floor_gate({"min_cos": 0.99}, patch.assign(kl=[0.1, 0.2, 0.3, 5.0]), {"a": {"route": "a", "fve": 0.70}}, 0.999, 0.01,
                     routes)
    assert [c["status"] for c in bad["checks"]] == ["✗", "✗", "✗"] and bad["pass"] is False

    no_patch = floor_gate({"min_cos": 1.0}, None, {}, 0.999, 0.01, routes)
    assert no_patch["checks"][1]["status"] == "–" and no_patch["pass"] is True


def test_gate_passes_a_run_that_extracted_its_own_golds():
    """The production shape: golds extracted by the run (no stored golds), no expected FVE: nothing fails."""
    patch = pd.DataFrame({"site_id": [0, 1, 2], "route": [""] * 3, "condition": ["gold"] * 3, "offset": [0] * 3,
                          "kl": [1e-6, 2e-6, 3e-6]})
    gate = floor_gate(None, patch, {"nla": {"route": "nla", "fve": 0.77}}, 0.999, 0.01, {"nla": {"kind": "file"}})
    by = {c["name"]: c for c in gate["checks"]}
    assert by["reextract"]["status"] == "–" and by["reextract"]["pass"] is None and "extracted" in by["reextract"]["detail"]
    assert by["gold_repatch"]["status"] == "✓" and by["fve_recheck"]["status"] == "–"
    assert gate["pass"] is True and "✗" not in gate["line"]
