"""The sparsity–damage frontier of a layer's routes: which routes no other route beats on both counts.

Each route of a layer is a point on two axes: how sparse or how faithful it is geometrically (**L0**, the
mean number of active latents, for a route that has one, i.e. an SAE; **FVE** for every route), and how
much the model loses when the reconstruction is spliced in (**damage**: the median KL@0 of the
reconstruction at gold norm; the loss recovered against the cross-document resample; and, beside ours
and labelled as theirs, SAELens' whole-context ``kl_div_score``).

**Dominance.** On one (sparsity axis, damage measure) pair, route *a* dominates route *b* when *a* is at
least as good as *b* on both and strictly better on at least one, where lower L0, higher FVE, lower
median KL@0, higher loss recovered and higher ``kl_div_score`` are better. The **frontier** is the set
of routes with finite values on both that no route dominates (two routes with identical values are both
on it). Dominance compares the point estimates; the CIs are in the table and the figure beside them.
A route without an L0 (not an SAE) is on no L0 frontier, and loss recovered is no score (no route is on
its frontier) when the floor's mean ΔCE@0 is not above 0 beyond its CI.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from causal_kl.conditions import HEADLINE_FLOOR

SPARSITY = {"l0": 1.0, "fve": -1.0}
"""The sparsity axes, each with the sign that makes it a cost (lower is better): L0 as it is, FVE negated."""
DAMAGE = {"kl0": ("kl0_median", 1.0), "loss": ("loss_recovered", -1.0), "saelens": ("saelens_kl_div_score", -1.0)}
"""The damage measures: the column each reads and the sign that makes it a cost."""

COLUMNS = ("layer", "route", "kind", "n", "l0", "fve", "kl0_median", "kl0_median_lo", "kl0_median_hi",
           "loss_recovered", "loss_recovered_lo", "loss_recovered_hi", "loss_recovered_defined",
           "saelens_kl_div_score") + tuple(f"frontier_{a}_{d}" for a in SPARSITY for d in DAMAGE)
"""The columns of :func:`frontier_table` (``frontier_{axis}_{damage}``: the route is on that pair's frontier)."""


def non_dominated(cost_x: np.ndarray, cost_y: np.ndarray) -> np.ndarray:
    """Which points no other point dominates, both coordinates costs (lower is better); a non-finite point is on no
    frontier and dominates nothing.

    A point dominates another when it is no worse on both coordinates and better on one. One sort and one sweep
    (O(n log n)): in order of ``cost_x`` (ties by ``cost_y``), a point is dominated exactly when an earlier point
    with a smaller ``cost_x`` has a ``cost_y`` no larger, or one with the same ``cost_x`` has a smaller ``cost_y``.
    """
    x = np.asarray(cost_x, dtype=np.float64)
    y = np.asarray(cost_y, dtype=np.float64)
    out = np.zeros(len(x), dtype=bool)
    ok = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    order = ok[np.lexsort((y[ok], x[ok]))]
    best = np.inf  # the smallest cost_y among points with a strictly smaller cost_x
    i = 0
    while i < len(order):
        j = i
        while j < len(order) and x[order[j]] == x[order[i]]:
            j += 1
        group = order[i:j]  # equal cost_x, sorted by cost_y
        lowest = y[group[0]]
        if lowest < best:
            out[group[y[group] == lowest]] = True
        best = min(best, lowest)
        i = j
    return out


def frontier_table(routes: pd.DataFrame, loss_defined: bool, layer: int, kinds: Mapping[str, str] | None = None,
                   ) -> pd.DataFrame:
    """One layer's frontier table from its routes table (:func:`causal_kl.tables.routes_table` with
    :func:`causal_kl.tables.with_saelens_columns`): per route its L0 (``sae_l0``; NaN for a route without one), FVE,
    the reconstruction's (gold norm) median KL@0 and loss recovered vs the headline floor with their CIs, SAELens'
    ``kl_div_score``, and ``frontier_{l0,fve}_{kl0,loss,saelens}``: whether the route is on that pair's frontier.

    ``loss_defined``: the headline floor's mean ΔCE@0 is above 0 beyond its CI (else loss recovered is no score and
    no route is on its frontiers). ``kinds``: route -> its kind (shown, not used).
    """
    def col(name: str) -> np.ndarray:
        return routes[name].to_numpy(dtype=np.float64) if name in routes else np.full(len(routes), np.nan)

    out = pd.DataFrame({
        "layer": np.full(len(routes), int(layer)),
        "route": routes["route"].astype(str).to_numpy(),
        "kind": [(kinds or {}).get(r, "") for r in routes["route"].astype(str)],
        "n": routes["n"].to_numpy() if "n" in routes else np.zeros(len(routes), dtype=int),
        "l0": col("sae_l0"),
        "fve": col("fve"),
        "kl0_median": col("recon_kl0_median"),
        "kl0_median_lo": col("recon_kl0_median_lo"),
        "kl0_median_hi": col("recon_kl0_median_hi"),
        "loss_recovered": col("recon_loss_recovered"),
        "loss_recovered_lo": col("recon_loss_recovered_lo"),
        "loss_recovered_hi": col("recon_loss_recovered_hi"),
        "loss_recovered_defined": np.full(len(routes), bool(loss_defined)),
        "saelens_kl_div_score": col("saelens_kl_div_score"),
    })
    for axis, sign in SPARSITY.items():
        for damage, (column, damage_sign) in DAMAGE.items():
            on = non_dominated(sign * out[axis].to_numpy(), damage_sign * out[column].to_numpy())
            if damage == "loss" and not loss_defined:
                on[:] = False
            out[f"frontier_{axis}_{damage}"] = on
    return out[list(COLUMNS)]


def loss_recovered_defined(conditions: pd.DataFrame) -> bool:
    """Whether loss recovered is a score at this layer: the headline floor's mean ΔCE@0 has a CI lower bound above 0
    (the rule of :func:`causal_kl.records.headline`), read from a route's conditions table."""
    d = conditions.set_index("condition")
    if HEADLINE_FLOOR not in d.index or "dce0_mean_lo" not in d:
        return False
    lo = float(d.loc[HEADLINE_FLOOR, "dce0_mean_lo"])
    return bool(np.isfinite(lo) and lo > 0)


def frontier_layers(frontiers: Mapping[int, pd.DataFrame]) -> pd.DataFrame:
    """Every layer's frontier table, one after another (each frontier is of its own layer: damage is not compared
    across layers)."""
    parts = [frontiers[layer] for layer in sorted(frontiers)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(COLUMNS))


__all__ = ["COLUMNS", "DAMAGE", "SPARSITY", "frontier_layers", "frontier_table", "loss_recovered_defined",
           "non_dominated"]
