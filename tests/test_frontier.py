"""The sparsity–damage frontier: the non-dominated rule against a brute-force reading of its definition, each axis
the right way round, routes without an L0 on no L0 frontier, an undefined loss recovered on no frontier, the table
taken from the routes table as the workflow writes it, and its figures."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from causal_kl import figures
from causal_kl.frontier import (COLUMNS, DAMAGE, SPARSITY, frontier_layers, frontier_table, loss_recovered_defined,
                                non_dominated)


def brute_force_frontier(x: list[float], y: list[float]) -> list[bool]:
    """The definition, pair by pair: a point is on the frontier when it has both values and no point with both values
    is at least as good on both and better on one (lower is better on both)."""
    ok = [np.isfinite(a) and np.isfinite(b) for a, b in zip(x, y)]
    out = []
    for i in range(len(x)):
        if not ok[i]:
            out.append(False)
            continue
        dominated = any(ok[j] and x[j] <= x[i] and y[j] <= y[i] and (x[j] < x[i] or y[j] < y[i])
                        for j in range(len(x)) if j != i)
        out.append(not dominated)
    return out


def test_non_dominated_equals_the_brute_force_definition_with_ties_and_gaps():
    rng = np.random.default_rng(0)
    for trial in range(2000):
        n = int(rng.integers(0, 12))
        grid = int(rng.integers(1, 5))  # a coarse grid: many ties on one axis or both
        x = rng.integers(0, grid + 1, size=n).astype(float)
        y = rng.integers(0, grid + 1, size=n).astype(float)
        x[rng.random(n) < 0.15] = np.nan
        y[rng.random(n) < 0.1] = np.inf if trial % 2 else np.nan
        assert non_dominated(x, y).tolist() == brute_force_frontier(x.tolist(), y.tolist()), (x, y)
    for x, y in itertools.product([[1.0, 2.0, 3.0]], [[3.0, 2.0, 1.0], [1.0, 2.0, 3.0], [2.0, 2.0, 2.0]]):
        assert non_dominated(x, y).tolist() == brute_force_frontier(x, y)
    # continuous values: the frontier of a random cloud
    x, y = rng.random(300), rng.random(300)
    assert non_dominated(x, y).tolist() == brute_force_frontier(x.tolist(), y.tolist())


def _routes(**cols) -> pd.DataFrame:
    """A routes table (the columns table_routes writes that the frontier reads)."""
    n = len(cols["route"])
    base = {"n": [100] * n, "recon_kl0_median_lo": [np.nan] * n, "recon_kl0_median_hi": [np.nan] * n,
            "recon_loss_recovered_lo": [np.nan] * n, "recon_loss_recovered_hi": [np.nan] * n}
    return pd.DataFrame({**base, **cols})


def test_each_axis_is_the_right_way_round_and_routes_without_l0_are_on_no_l0_frontier():
    routes = _routes(
        route=["sae_k4", "sae_k16", "sae_k64", "pca", "text"],
        sae_l0=[4.0, 16.0, 64.0, np.nan, np.nan],
        fve=[0.80, 0.90, 0.95, 0.70, 0.99],
        recon_kl0_median=[0.10, 0.05, 0.06, 0.30, 0.20],
        recon_loss_recovered=[0.90, 0.95, 0.97, 0.80, 0.85],
        saelens_kl_div_score=[0.90, 0.96, 0.95, 0.70, np.nan],
    )
    f = frontier_table(routes, loss_defined=True, layer=3, kinds={"sae_k4": "sae"})
    assert list(f.columns) == list(COLUMNS) and (f["layer"] == 3).all()
    f = f.set_index("route")
    # L0 (lower is better) vs KL (lower is better): k64 is dominated by k16 (sparser and less damaging)
    assert f["frontier_l0_kl0"].to_dict() == {"sae_k4": True, "sae_k16": True, "sae_k64": False, "pca": False,
                                              "text": False}
    # L0 vs loss recovered (higher is better): k64 recovers the most, so it is back on
    assert f.loc[["sae_k4", "sae_k16", "sae_k64"], "frontier_l0_loss"].all() and not f.loc[["pca", "text"], "frontier_l0_loss"].any()
    # FVE (higher is better) vs KL: k16 has the lowest KL, text the highest FVE, k64 a higher FVE than k16 and a
    # lower KL than text: all three on; k4 and pca are dominated by k16
    assert f["frontier_fve_kl0"].to_dict() == {"sae_k4": False, "sae_k16": True, "sae_k64": True, "pca": False,
                                               "text": True}
    # SAELens' score (higher is better); text has none: on no SAELens frontier
    assert f["frontier_fve_saelens"].to_dict() == {"sae_k4": False, "sae_k16": True, "sae_k64": True, "pca": False,
                                                   "text": False}
    # every column against the brute force, with each axis turned into a cost by hand
    cost = {"l0": routes["sae_l0"], "fve": -routes["fve"], "kl0": routes["recon_kl0_median"],
            "loss": -routes["recon_loss_recovered"], "saelens": -routes["saelens_kl_div_score"]}
    for axis in SPARSITY:
        for damage in DAMAGE:
            want = brute_force_frontier(cost[axis].tolist(), cost[damage].tolist())
            assert f[f"frontier_{axis}_{damage}"].tolist() == want, (axis, damage)
    assert f.loc["sae_k4", "kind"] == "sae" and f.loc["pca", "kind"] == ""


def test_an_undefined_loss_recovered_is_on_no_frontier():
    routes = _routes(route=["a", "b"], sae_l0=[4.0, 8.0], fve=[0.5, 0.6], recon_kl0_median=[0.2, 0.1],
                     recon_loss_recovered=[0.5, 0.6], saelens_kl_div_score=[0.5, 0.6])
    f = frontier_table(routes, loss_defined=False, layer=1)
    assert not f["frontier_l0_loss"].any() and not f["frontier_fve_loss"].any() and not f["loss_recovered_defined"].any()
    assert f["frontier_fve_kl0"].tolist() == [False, True]


def test_the_frontier_reads_the_routes_table_the_workflow_writes(tmp_path):
    from synthetic_results import build_outputs, make_results

    routes = ("sae_a", "sae_b", "pca")
    R = make_results(tmp_path, routes=routes)
    manifest = build_outputs(R, routes=routes, route_figures=False, pages=False, sae={"sae_a": 8.0, "sae_b": 32.0},
                             whole_context={"sae_a": 0.9, "sae_b": 0.95, "pca": 0.7})
    table = pd.read_csv(R / "tables/routes.csv").set_index("route")
    f = pd.read_csv(R / "tables/frontier.csv").set_index("route")
    assert list(f.index) == list(routes)
    for col, src in (("kl0_median", "recon_kl0_median"), ("kl0_median_lo", "recon_kl0_median_lo"),
                     ("loss_recovered_hi", "recon_loss_recovered_hi"), ("fve", "fve"),
                     ("saelens_kl_div_score", "saelens_kl_div_score"), ("l0", "sae_l0")):
        np.testing.assert_allclose(f[col].to_numpy(float), table[src].to_numpy(float), rtol=1e-5, err_msg=col)
    assert np.isnan(f.loc["pca", "l0"]) and not f.loc["pca", "frontier_l0_kl0"]
    # loss recovered is a score here exactly when the cross-doc floor's mean ΔCE@0 CI is above 0
    cond = pd.read_csv(R / "tables/sae_a/conditions.csv").set_index("condition")
    assert f["loss_recovered_defined"].all() == bool(cond.loc["resample_cross_doc", "dce0_mean_lo"] > 0)
    assert loss_recovered_defined(cond.reset_index()) == f["loss_recovered_defined"].all()
    assert manifest["layers"]["3"]["frontier"]["table"].endswith("tables/frontier.csv")


def test_frontier_layers_keeps_each_layer_as_it_is():
    a = frontier_table(_routes(route=["x", "y"], sae_l0=[1.0, 2.0], fve=[0.5, 0.6], recon_kl0_median=[0.2, 0.1],
                               recon_loss_recovered=[0.5, 0.6], saelens_kl_div_score=[0.5, 0.6]), True, 7)
    b = frontier_table(_routes(route=["x"], sae_l0=[5.0], fve=[0.1], recon_kl0_median=[3.0],
                               recon_loss_recovered=[0.1], saelens_kl_div_score=[0.1]), True, 2)
    both = frontier_layers({7: a, 2: b})
    assert both["layer"].tolist() == [2, 7, 7]
    # layer 2's one route is on its own frontier though layer 7's routes beat it: frontiers are per layer
    assert both.loc[both.layer == 2, "frontier_l0_kl0"].tolist() == [True]
    pd.testing.assert_frame_equal(both[both.layer == 7].reset_index(drop=True), a)


@pytest.mark.parametrize("with_l0", [True, False])
def test_frontier_figures(tmp_path, with_l0):
    routes = _routes(route=["s4", "s16", "pca"], sae_l0=[4.0, 16.0, np.nan] if with_l0 else [np.nan] * 3,
                     fve=[0.8, 0.9, 0.7], recon_kl0_median=[0.1, 0.05, 0.3], recon_loss_recovered=[0.9, 0.95, 0.8],
                     saelens_kl_div_score=[0.9, 0.96, 0.7])
    f = frontier_table(routes, True, 3)
    fig = figures.fig_frontier(f)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 6
    texts = " ".join(t.get_text() for ax in axes for t in ax.texts)
    assert ("no route of this layer has an L0" in texts) == (not with_l0)
    figures.save(fig, tmp_path / "f.png", tmp_path / "f.svg", dpi=60)
    assert (tmp_path / "f.png").stat().st_size > 5000 and (tmp_path / "f.svg").stat().st_size > 5000
    g = figures.fig_frontier_layers(frontier_layers({3: f, 5: f.assign(layer=5)}))
    assert len([ax for ax in g.axes if ax.get_visible()]) == 4
    figures.save(g, tmp_path / "g.png", None, dpi=60)
    assert (tmp_path / "g.png").stat().st_size > 5000
