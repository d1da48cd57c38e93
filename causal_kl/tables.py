"""The write-up's tables, one function each, computed from a route's per-site table (or the patch table).

Each returns a DataFrame that a rule writes as CSV and the report renders. Medians and loss
recovered carry bootstrap CIs (``_lo``/``_hi`` columns) from resampling sites
(:func:`causal_kl.stats.bootstrap`). Published values are added by :mod:`causal_kl.reference`.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from causal_kl import per_site, stats
from causal_kl.conditions import (CLEAN, FLOOR_CONDITIONS, GOLD, HEADLINE_FLOOR, LABELS, LOSS_FLOORS, MEASURED, NOISE,
                                  RECON, RECON_RAW, ROUTE_CONDITIONS, TABLE_ORDER)
from causal_kl.errors import CausalKLError

DIGIT_CLASS = {"digit": r"^\s*\d+\s*$"}
"""The token class the write-up reports (a token that is digits only, spaces aside)."""

ROUTE_TAGS = ((RECON, "recon"), (RECON_RAW, "rawnorm"), (NOISE, "noise"))
"""The route conditions of the multi-route table and the column prefix each gets there."""



CONDITIONS_COLUMNS = tuple(f"{p}_{c}" for c in TABLE_ORDER for p in ("kl0", "dce0"))
"""The per-site columns :func:`conditions_table` reads."""
QUARTILE_COLUMNS = ("direction_mse", f"kl0_{RECON}", f"kl0_{NOISE}")
"""The per-site columns :func:`quartile_table` reads."""
TOKEN_CLASS_COLUMNS = ("token", "direction_mse", *(f"kl0_{c}" for c in ROUTE_CONDITIONS))
"""The per-site columns :func:`token_class_table` reads."""


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
    """§5: median KL per condition (columns) at each offset 0–31 (rows); n sites per offset too.

    One offset at a time (a group's median does not depend on the other groups'): the working memory is one
    offset's rows, not another copy of every row (~30 M for a route and the floors at 100k sites).
    """
    offsets = patch["offset"].to_numpy()
    conditions = patch["condition"]
    has_gold = bool((conditions == GOLD).any())
    medians, n_sites = {}, {}
    for o in np.unique(offsets):
        sub = patch.iloc[np.flatnonzero(offsets == o)]
        sub = sub[sub["condition"] != CLEAN]
        if sub.empty:
            continue
        medians[o] = sub.groupby("condition", observed=True)["kl"].median()
        n_sites[o] = sub[sub["condition"] == GOLD]["site_id"].nunique() if has_gold else sub["site_id"].nunique()
    med = pd.DataFrame({o: m.set_axis([str(c) for c in m.index]) for o, m in medians.items()}).T
    cols = [c for c in TABLE_ORDER if c in med.columns]
    out = med[cols].astype(np.float64).rename_axis("offset").reset_index()
    out.columns.name = "condition"
    out.insert(1, "n_sites", out["offset"].map(n_sites).fillna(0).astype(int))
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


def offset_frame(patch: pd.DataFrame, offset: int = 0) -> pd.DataFrame:
    """Sites × ``kl0_<c>``, ``dce0_<c>`` for every measured condition at one offset (NaN where a site lacks one).

    The columns are named as :func:`conditions_table` reads them; here the ``0`` means "the offset
    asked for", so ``conditions_table(offset_frame(patch, k))`` is the §2 table at offset ``k``.
    ``patch`` is one run's patch rows (contract ``PATCH``) for one span and one route plus the
    floors; a site is a row when it has any condition (clean included) at ``offset``.
    """
    sub = patch[patch["offset"] == offset]
    measured = sub[sub["condition"] != CLEAN]
    dup = measured.duplicated(["site_id", "condition"])
    if dup.any():
        raise CausalKLError("patch", "condition", f"{int(dup.sum())} (site, condition) pairs have more than one row at "
                            f"offset {offset}", "pass the rows of one span and one route (plus the floors)")
    ids = np.sort(sub["site_id"].unique())
    out = pd.DataFrame({"site_id": ids.astype(np.int64)})
    kl = per_site.wide(measured, "kl", offset)
    dce = per_site.wide(measured, "delta_ce", offset)
    for c in MEASURED:
        out[f"kl0_{c}"] = kl[c].reindex(ids).to_numpy(dtype=np.float64) if c in kl else np.nan
        out[f"dce0_{c}"] = dce[c].reindex(ids).to_numpy(dtype=np.float64) if c in dce else np.nan
    return out


def span_conditions_table(patch: pd.DataFrame, n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> pd.DataFrame:
    """§2 for a span run: the conditions table at offset 0, the first token after the span."""
    return conditions_table(offset_frame(patch, 0), n_boot, seed, ci)


def spans_table(patches: Mapping[int, pd.DataFrame], offsets: Sequence[int] = (0, 1, 5, 31), n_boot: int = 1000,
                seed: int = 0, ci: float = 0.95) -> pd.DataFrame:
    """Is a position's payload read beyond itself? Per span k and condition: median KL and loss recovered by offset.

    ``patches[k]`` is the patch table of the run with span ``k`` (one route plus the floors);
    offsets count from the span's last position (0 = the first token after the span). One row per
    (span, condition of ``TABLE_ORDER`` that has rows): ``n_sites`` (sites with the condition at
    offset 0) and for each offset ``o``: ``kl_median_at_{o}`` (+ ``_lo``/``_hi``, site bootstrap),
    ``loss_recovered_at_{o}`` (+ CI) = 1 − mean ΔCE@o(condition) / mean ΔCE@o(headline floor) over
    the sites that have both, and ``loss_recovered_defined_at_{o}``: the floor's mean ΔCE@o has a
    CI lower bound above 0 (the rule of :func:`causal_kl.records.headline`).
    """
    rows = []
    for k in sorted(patches):
        patch = patches[k]
        present = set(patch["condition"].unique())
        frames = {o: offset_frame(patch, o) for o in offsets}
        first = frames[0] if 0 in frames else offset_frame(patch, 0)
        defined = {}
        for o, fr in frames.items():
            fl = fr[f"dce0_{HEADLINE_FLOOR}"].to_numpy(dtype=np.float64)
            _, lo, _ = stats.bootstrap([fl], stats.nanmean, n_boot, seed, ci)  # as conditions_table's dce0_mean_lo
            defined[o] = bool(np.isfinite(lo) and lo > 0)
        for c in TABLE_ORDER:
            if c not in present:
                continue
            row: dict = {"span": int(k), "condition": c, "label": LABELS[c],
                         "n_sites": int(np.isfinite(first[f"kl0_{c}"].to_numpy(dtype=np.float64)).sum())}
            for o, fr in frames.items():
                kl = fr[f"kl0_{c}"].to_numpy(dtype=np.float64)
                key = f"kl_median_at_{o}"
                row[key], row[f"{key}_lo"], row[f"{key}_hi"] = stats.bootstrap([kl], stats.nanmedian, n_boot, seed, ci)
                dce = fr[f"dce0_{c}"].to_numpy(dtype=np.float64)
                fl = fr[f"dce0_{HEADLINE_FLOOR}"].to_numpy(dtype=np.float64)
                both = np.isfinite(dce) & np.isfinite(fl)
                key = f"loss_recovered_at_{o}"
                est = stats.bootstrap([dce[both], fl[both]], stats.loss_recovered, n_boot, seed, ci)
                row[key], row[f"{key}_lo"], row[f"{key}_hi"] = est
                row[f"loss_recovered_defined_at_{o}"] = defined[o]
            rows.append(row)
    cols = ["span", "condition", "label", "n_sites"]
    for o in offsets:
        cols += [f"kl_median_at_{o}", f"kl_median_at_{o}_lo", f"kl_median_at_{o}_hi", f"loss_recovered_at_{o}",
                 f"loss_recovered_at_{o}_lo", f"loss_recovered_at_{o}_hi", f"loss_recovered_defined_at_{o}"]
    return pd.DataFrame(rows, columns=cols)


LAYER_COLUMNS = ("layer", "route", "condition", "label", "n", "kl0_median", "kl0_median_lo", "kl0_median_hi",
                 "loss_recovered", "loss_recovered_lo", "loss_recovered_hi", "loss_recovered_defined", "fve")
"""The columns of :func:`layers_table`."""


def layers_table(conditions: Mapping[tuple[int, str], pd.DataFrame],
                 fve: Mapping[tuple[int, str], float | None]) -> pd.DataFrame:
    """Multi-layer comparison: median KL@0 and headline loss recovered (with CIs) per layer, route and condition.

    ``conditions[(layer, route)]`` is that route's :func:`conditions_table` at that layer,
    ``fve[(layer, route)]`` its FVE. One row per (layer, route, route condition) and one per
    (layer, floor) with route ``""`` (taken from the layer's first route, by name: the floors do not
    depend on the route). ``loss_recovered`` is vs the headline floor; ``loss_recovered_defined``
    follows :func:`causal_kl.records.headline` (the floor's mean ΔCE@0 CI lower bound above 0);
    ``fve`` is NaN on floor rows. Sorted by layer, route, then ``TABLE_ORDER``.
    """
    key = f"loss_recovered_vs_{HEADLINE_FLOOR}"

    def row(layer: int, route: str, c: str, d: pd.DataFrame, f) -> dict:
        r = d.loc[c]
        lo = float(d.loc[HEADLINE_FLOOR, "dce0_mean_lo"]) if "dce0_mean_lo" in d and HEADLINE_FLOOR in d.index \
            else float("nan")
        return {"layer": int(layer), "route": route, "condition": c, "label": LABELS[c], "n": int(r["n"]),
                "kl0_median": float(r["kl0_median"]), "kl0_median_lo": float(r["kl0_median_lo"]),
                "kl0_median_hi": float(r["kl0_median_hi"]), "loss_recovered": float(r[key]),
                "loss_recovered_lo": float(r[f"{key}_lo"]), "loss_recovered_hi": float(r[f"{key}_hi"]),
                "loss_recovered_defined": bool(np.isfinite(lo) and lo > 0),
                "fve": float(f) if f is not None else float("nan")}

    rows = []
    floors_done: set[int] = set()
    for layer, route in sorted(conditions):
        d = conditions[(layer, route)].set_index("condition")
        for c in ROUTE_CONDITIONS:
            if c in d.index:
                rows.append(row(layer, route, c, d, fve.get((layer, route))))
        if layer not in floors_done:
            floors_done.add(layer)
            rows += [row(layer, "", c, d, None) for c in FLOOR_CONDITIONS if c in d.index]
    out = pd.DataFrame(rows, columns=list(LAYER_COLUMNS))
    order = {c: i for i, c in enumerate(TABLE_ORDER)}
    out = out.assign(_o=out["condition"].map(order)).sort_values(["layer", "route", "_o"], kind="stable")
    return out.drop(columns="_o").reset_index(drop=True)


SAELENS_COLUMNS = {"kl_div_score": "saelens_kl_div_score", "ce_loss_score": "saelens_ce_loss_score"}
"""The whole-context scores the routes table shows, named as SAELens' (``sae_lens/evals.py``), beside ours."""
SAE_COLUMNS = {"l0": "sae_l0", "dead_share": "sae_dead_share"}
"""An SAE route's L0 (mean active latents) and dead-latent share on the eval golds."""


def with_saelens_columns(routes: pd.DataFrame, scores: Mapping[str, Mapping], sparsity: Mapping[str, Mapping]) -> pd.DataFrame:
    """The routes table with SAELens' whole-context ``kl_div_score``/``ce_loss_score`` (NaN, with the reason in
    ``saelens_skipped``, for a route that cannot reconstruct every position) and an SAE's L0 and dead share."""
    out = routes.copy()
    for key, col in SAELENS_COLUMNS.items():
        out[col] = [float(scores[r][key]) if r in scores and key in scores[r] else np.nan for r in out["route"]]
    out["saelens_skipped"] = [str(scores[r].get("skipped") or "") if r in scores else "" for r in out["route"]]
    for key, col in SAE_COLUMNS.items():
        out[col] = [float(sparsity[r][key]) if r in sparsity else np.nan for r in out["route"]]
    return out
