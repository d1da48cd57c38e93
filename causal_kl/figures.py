"""The write-up's figures (matplotlib in seaborn's whitegrid theme), one function each, plus the multi-route comparison.

Each function takes already-computed data keyed by route (one panel, bar group or line set
per route) and plotting options, and returns a matplotlib Figure; :func:`save` writes it as
PNG and SVG atomically. KL values of exactly 0 cannot sit on a log axis: they are drawn at
``kl_floor`` and the axis label says so.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from cycler import cycler  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402
import textwrap  # noqa: E402

from causal_kl.conditions import (CROSS_DOC, FLOOR_CONDITIONS, GOLD, HEADLINE_FLOOR, LABELS, MEAN,  # noqa: E402
                                  NOISE, RECON, RECON_RAW, SAME_DOC, TABLE_ORDER, ZERO)
from causal_kl.io import atomic_path  # noqa: E402
from causal_kl.tables import ROUTE_TAGS  # noqa: E402

PALETTE = {
    GOLD: "#999999",
    RECON: "#1f77b4",
    RECON_RAW: "#6baed6",
    NOISE: "#ff7f0e",
    SAME_DOC: "#2ca02c",
    CROSS_DOC: "#006d2c",
    ZERO: "#d62728",
    MEAN: "#9467bd",
}


DEEP = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd")
"""seaborn's "deep" palette: ``color_palette("deep")``."""

THEME = {
    "axes.axisbelow": True, "axes.edgecolor": ".8", "axes.facecolor": "white", "axes.grid": True,
    "axes.labelcolor": ".15", "axes.labelsize": 12.0, "axes.linewidth": 1.25, "axes.prop_cycle": cycler(color=DEEP),
    "axes.spines.bottom": True, "axes.spines.left": True, "axes.spines.right": True, "axes.spines.top": True,
    "axes.titlesize": 12.0, "figure.facecolor": "white", "font.family": ["sans-serif"],
    "font.sans-serif": ["Arial", "DejaVu Sans", "Liberation Sans", "Bitstream Vera Sans", "sans-serif"],
    "font.size": 12.0, "grid.color": ".8", "grid.linestyle": "-", "grid.linewidth": 1.0, "legend.fontsize": 11.0,
    "legend.title_fontsize": 12.0, "lines.linewidth": 1.5, "lines.markersize": 6.0, "lines.solid_capstyle": "round",
    "patch.edgecolor": "w", "patch.force_edgecolor": True, "patch.linewidth": 1.0, "text.color": ".15",
    "xtick.bottom": False, "xtick.color": ".15", "xtick.direction": "out", "xtick.labelsize": 11.0,
    "xtick.major.pad": 3.5, "xtick.major.size": 6.0, "xtick.major.width": 1.25, "xtick.minor.pad": 3.4,
    "xtick.minor.size": 4.0, "xtick.minor.width": 1.0, "xtick.top": False, "ytick.color": ".15",
    "ytick.direction": "out", "ytick.labelsize": 11.0, "ytick.left": False, "ytick.major.pad": 3.5,
    "ytick.major.size": 6.0, "ytick.major.width": 1.25, "ytick.minor.pad": 3.4, "ytick.minor.size": 4.0,
    "ytick.minor.width": 1.0, "ytick.right": False,
}
"""seaborn's ``set_theme(style="whitegrid", context="notebook")`` as matplotlib settings (its colormap aside: no figure
draws an image). Importing seaborn imports scipy.stats, about a third of a figure job's CPU time; tests/test_figures.py
holds these settings and palettes equal to seaborn's own."""


def _theme() -> None:
    matplotlib.rcParams.update(THEME)


def _palette(name: str, n: int) -> list:
    """``n`` colours of seaborn's ``deep`` palette (cycled), or ``n`` evenly spaced inside a matplotlib colormap (its
    ends left out), as seaborn's ``color_palette(name, n)`` gives them."""
    if name == "deep":
        return [DEEP[i % len(DEEP)] for i in range(n)]
    cmap = matplotlib.colormaps[name]
    return [tuple(float(c) for c in cmap(x)[:3]) for x in np.linspace(0, 1, int(n) + 2)[1:-1]]


def _log_ticks(axis, values) -> None:
    """Short plain-number labels on a log axis: minor ticks at 2 and 5 labelled when the data span < 1.6 decades."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v) & (v > 0)]
    fmt = FuncFormatter(lambda t, _: f"{t:g}")
    axis.set_major_formatter(fmt)
    axis.set_minor_locator(LogLocator(base=10, subs=(2.0, 5.0)))
    span = np.log10(v.max() / v.min()) if v.size > 1 else 0.0
    axis.set_minor_formatter(fmt if span < 1.6 else NullFormatter())


def _grid(n: int, width: float, height: float, max_cols: int = 3):
    cols = min(max(n, 1), max_cols)
    rows = math.ceil(max(n, 1) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


FIG1_COLUMNS = ("direction_mse", f"kl0_{RECON}")
"""The per-site columns figure 1 reads."""


def fig1_geometry_vs_kl(
    data: Mapping[str, pd.DataFrame],
    correlation: Mapping[str, Mapping],
    subsample: int = 400,
    seed: int = 0,
    width: float = 5.5,
    height: float = 4.5,
    point_size: float = 14.0,
    alpha: float = 0.5,
    kl_floor: float = 1e-6,
) -> plt.Figure:
    """Direction-MSE vs KL@0 (recon, gold norm) per site, log–log, one panel per route, ρ in the title.

    ``data[route]`` has columns ``direction_mse`` and ``kl0_recon_goldnorm``;
    ``correlation[route]`` is the route's ``correlation`` record (``dmse_vs_kl0.rho/p/n``).
    """
    _theme()
    fig, axes = _grid(len(data), width, height)
    for ax, (route, df) in zip(axes, data.items()):
        kl0 = f"kl0_{RECON}"
        df = df[["direction_mse", kl0]].dropna()
        n_all = len(df)
        if len(df) > subsample:
            df = df.sample(n=subsample, random_state=seed)
        x = df["direction_mse"].clip(lower=1e-12)
        y = df[kl0].clip(lower=kl_floor)
        ax.scatter(x, y, s=point_size, alpha=alpha, color=PALETTE[RECON], edgecolors="none")
        ax.set_xscale("log")
        ax.set_yscale("log")
        _log_ticks(ax.xaxis, x)
        _log_ticks(ax.yaxis, y)
        ax.tick_params(which="both", length=3)  # labelled minor ticks sit level with the major ones
        c = correlation.get(route, {}).get("dmse_vs_kl0", {})
        rho, p = c.get("rho", float("nan")), c.get("p", float("nan"))
        ax.set_title(f"{route}: Spearman ρ = {rho:.3f} (p = {p:.2g})\n{len(df)} of {n_all} sites shown",
                     fontsize=10)
        ax.set_xlabel("direction-MSE (what FVE measures)")
        ax.set_ylabel("KL@0, nats (what the model feels)")
    fig.tight_layout()
    return fig


FIG2_CONDITIONS = (NOISE, RECON, SAME_DOC, CROSS_DOC)


def fig2_damage_per_energy(
    data: Mapping[str, Mapping],
    width: float = 9.0,
    height: float = 4.5,
) -> plt.Figure:
    """Median KL@0 per unit squared error norm, normalised to noise = 1, log scale, with CIs.

    ``data[route]`` is the route's ``energy`` record (``normalised[condition] = {value, lo, hi}``).
    """
    _theme()
    rows = []
    for route, rec in data.items():
        for c in FIG2_CONDITIONS:
            v = rec.get("normalised", {}).get(c, {})
            rows.append({"route": route, "condition": LABELS[c], "key": c, "value": v.get("value", np.nan),
                         "lo": v.get("lo", np.nan), "hi": v.get("hi", np.nan)})
    df = pd.DataFrame(rows, columns=["route", "condition", "key", "value", "lo", "hi"])
    n_routes = max(len(data), 1)
    fig, ax = plt.subplots(figsize=(width, height))
    x = np.arange(len(FIG2_CONDITIONS))
    w = 0.8 / n_routes
    colors = _palette("deep", n_routes) if n_routes > 1 else [PALETTE[RECON]]
    for j, route in enumerate(data):
        sub = df[df["route"] == route].set_index("key").reindex(list(FIG2_CONDITIONS))
        xx = x + (j - (n_routes - 1) / 2) * w
        v, lo, hi = (sub[k].to_numpy(dtype=np.float64) for k in ("value", "lo", "hi"))
        ok = np.isfinite(v) & (v > 0)
        bar_colors = [PALETTE[c] for c in FIG2_CONDITIONS] if n_routes == 1 else colors[j]
        ax.bar(xx[ok], v[ok], width=w * 0.92, color=np.array(bar_colors, dtype=object)[ok].tolist()
               if n_routes == 1 else bar_colors, label=route)
        has_ci = ok & np.isfinite(lo) & np.isfinite(hi) & (lo > 0)
        if has_ci.any():
            ax.errorbar(xx[has_ci], v[has_ci], yerr=[v[has_ci] - lo[has_ci], hi[has_ci] - v[has_ci]],
                        fmt="none", ecolor="black", capsize=3, lw=1)
        for xi, vi, hi_i in zip(xx[ok], v[ok], np.where(np.isfinite(hi), hi, v)[ok]):
            ax.annotate(f"{vi:.3g}×", (xi, max(vi, hi_i)), xytext=(0, 3), textcoords="offset points",
                        ha="center", va="bottom", fontsize=9)
    ax.set_xticks(x)
    ax.set_xticklabels([textwrap.fill(LABELS[c], 14) for c in FIG2_CONDITIONS])
    ax.set_yscale("log")
    ax.axhline(1.0, color="#555555", ls="--", lw=1)
    ax.set_xlabel("")
    ax.set_ylabel("KL@0 / ‖error‖², median,\nrelative to matched noise")
    ax.set_title("Causal damage per unit squared error norm (noise = 1)", fontsize=11)
    lo_y, hi_y = ax.get_ylim()
    ax.set_ylim(lo_y, hi_y * 3)  # room for the labels above the tallest bar
    if n_routes > 1:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), title="route", frameon=False)
    fig.tight_layout()
    return fig


def fig3_kl_by_offset(
    data: Mapping[str, pd.DataFrame],
    width: float = 6.5,
    height: float = 4.5,
    kl_floor: float = 1e-6,
    linewidth: float = 1.6,
    inside_span: bool = False,
) -> plt.Figure:
    """Median KL by offset from the patch (log10), one line per condition, one panel per route.

    ``data[route]`` is the route's offsets table (``offset`` + one column per condition). With
    ``inside_span`` (a span run), offsets count from the span's last position: negative offsets
    (positions inside the span) are drawn too, on a shaded band; by default the axis starts at 0.
    """
    _theme()
    fig, axes = _grid(len(data), width, height)
    for ax, (route, df) in zip(axes, data.items()):
        for c in TABLE_ORDER:
            if c not in df:
                continue
            y = df[c].to_numpy(dtype=np.float64)
            ax.plot(df["offset"], np.log10(np.clip(y, kl_floor, None)), marker="o", ms=3, lw=linewidth,
                    color=PALETTE[c], label=LABELS[c], ls="--" if c == GOLD else "-")
        ax.set_xlabel("offset from the patched position (tokens)")
        ax.set_ylabel("log10 median KL (nats)")
        ax.set_title(route, fontsize=10)
        x_hi = max(float(df["offset"].max()) if len(df) else 1.0, 1.0) + 0.5
        x_lo = min(float(df["offset"].min()) if len(df) else 0.0, 0.0) - 0.5 if inside_span else -0.5
        ax.set_xlim(x_lo, x_hi)
        if inside_span:
            ax.set_xlabel("offset from the span's last position (tokens; < 0: inside the span)")
            if x_lo < -0.5:
                ax.axvspan(x_lo, -0.5, color="#bbbbbb", alpha=0.25, lw=0, zorder=0)
                ax.text(x_lo + 0.2, 0.02, "inside the span", transform=ax.get_xaxis_transform(), fontsize=8,
                        color="#555555", va="bottom")
    handles, labels = axes[0].get_legend_handles_labels() if axes else ([], [])
    if handles:
        fig.legend(handles, labels, loc="upper center", ncol=4, frameon=False, bbox_to_anchor=(0.5, 1.0),
                   fontsize=9)
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.55 / fig.get_figheight()))
    else:
        fig.tight_layout()
    return fig


def fig_routes(routes: pd.DataFrame, width: float = 11.0, height_per_route: float = 0.6) -> plt.Figure:
    """Multi-route comparison: loss recovered (vs cross-doc) and median KL@0 per route, with CIs.

    ``routes`` is :func:`causal_kl.tables.routes_table`'s output; one row of points per route,
    one marker per condition (reconstruction at gold norm, at raw norm, matched noise).
    """
    _theme()
    n = max(len(routes), 1)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(width, 1.8 + height_per_route * n * 1.5))
    tags = tuple((tag, LABELS[c], marker) for (c, tag), marker in zip(ROUTE_TAGS, "osD"))
    colors = tuple(PALETTE[c] for c, _ in ROUTE_TAGS)
    y = np.arange(n)
    step = 0.6 / len(tags)
    for j, ((tag, label, marker), color) in enumerate(zip(tags, colors)):
        yy = y + (j - (len(tags) - 1) / 2) * step
        for ax, key in ((a1, f"{tag}_loss_recovered"), (a2, f"{tag}_kl0_median")):
            v = routes[key].to_numpy(dtype=np.float64)
            lo = routes[f"{key}_lo"].to_numpy(dtype=np.float64)
            hi = routes[f"{key}_hi"].to_numpy(dtype=np.float64)
            err = np.vstack([np.where(np.isfinite(lo), v - lo, 0), np.where(np.isfinite(hi), hi - v, 0)])
            ax.errorbar(v, yy, xerr=err, fmt=marker, color=color, label=label, capsize=3, ms=6, lw=1.2)
    for ax in (a1, a2):
        ax.set_yticks(y)
        ax.set_yticklabels(routes["route"].tolist())
        ax.set_ylim(n - 0.5, -0.5)
    a1.set_xlabel("loss recovered vs cross-doc resample,\n1 − mean ΔCE / mean ΔCE(cross-doc)")
    a2.set_xlabel("median KL@0, nats")
    a1.set_title("Loss recovered (95% CI)", fontsize=11)
    a2.set_title("Median KL@0 (95% CI)", fontsize=11)
    handles, labels = a1.get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=3, frameon=False, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))
    return fig


OFFSET_MARKERS = ("o", "s", "D", "^", "v", "P", "X")
"""Markers (and, in order, line styles) of the offsets in the loss-recovered panel of :func:`fig_spans`."""
_OFFSET_STYLES = ("-", "--", ":", "-.")


def _errorbar(ax, x, v, lo, hi, **kw):
    """Points ``v`` at ``x`` with CI bars where ``lo``/``hi`` are finite (non-finite ``v`` dropped)."""
    x, v, lo, hi = (np.asarray(a, dtype=np.float64) for a in (x, v, lo, hi))
    ok = np.isfinite(v)
    x, v, lo, hi = x[ok], v[ok], lo[ok], hi[ok]
    err = np.vstack([np.where(np.isfinite(lo), np.maximum(v - lo, 0.0), 0.0),
                     np.where(np.isfinite(hi), np.maximum(hi - v, 0.0), 0.0)])
    return ax.errorbar(x, v, yerr=err, capsize=3, ms=5, lw=1.4, **kw)


def _at_floor(values, kl_floor: float) -> np.ndarray:
    """KL values as float64 with 0 (and anything below ``kl_floor``) drawn at ``kl_floor``."""
    return np.clip(np.asarray(values, dtype=np.float64), kl_floor, None)


def _span_axis(ax, spans) -> None:
    """Log2 x axis with one labelled tick per span length present."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(spans)
    ax.set_xticklabels([str(int(k)) for k in spans])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(min(spans) / 1.4, max(spans) * 1.4)
    ax.set_xlabel("span length k (positions patched at once)")


def fig_spans(
    spans: pd.DataFrame,
    offsets: tuple[int, ...] = (1, 5, 31),
    width: float = 12.0,
    height: float = 7.0,
    kl_floor: float = 1e-6,
) -> plt.Figure:
    """Is a position's payload read beyond itself? Median KL and loss recovered after the span, against span length.

    ``spans`` is :func:`causal_kl.tables.spans_table`'s output. One panel per offset in ``offsets``:
    median KL at that offset (log y, 0 drawn at ``kl_floor``) against span length, one line per
    condition, CIs as error bars; then one panel of loss recovered (vs cross-doc resample) against
    span length at offset 0 and at the other offsets of the table, undefined points (floor's mean ΔCE
    CI not above 0) omitted and listed. Offsets count from the span's last position. ``width`` and
    ``height`` are the whole figure's, in inches.
    """
    _theme()
    n = len(offsets) + 1
    cols = min(n, 2 if n <= 4 else 3)
    fig, axes = _grid(n, width / cols, height / math.ceil(n / cols), max_cols=cols)
    ks = sorted(int(k) for k in spans["span"].unique()) if len(spans) else [1]
    conds = [c for c in TABLE_ORDER if c in set(spans["condition"])]
    for ax, o in zip(axes, offsets):
        key = f"kl_median_at_{o}"
        if key not in spans:
            ax.text(0.5, 0.5, f"offset {o} is not in the spans table", ha="center", va="center", transform=ax.transAxes)
        else:
            for c in conds:
                sub = spans[spans["condition"] == c].sort_values("span")
                v, lo, hi = (_at_floor(sub[f"{key}{s}"], kl_floor) for s in ("", "_lo", "_hi"))
                _errorbar(ax, sub["span"], v, lo, hi,
                          color=PALETTE[c], label=LABELS[c], marker="o", ls="--" if c == GOLD else "-")
            ax.set_yscale("log")
            _log_ticks(ax.yaxis, _at_floor(spans[[key, f"{key}_lo", f"{key}_hi"]], kl_floor))
        _span_axis(ax, ks)
        ax.set_ylabel(f"median KL at offset {o}, nats\n(0 drawn at {kl_floor:g})")
        ax.set_title(f"offset {o} from the span's last position", fontsize=10)
    ax = axes[-1]
    lr_offsets = [o for o in (0, *[o for o in offsets if o != 0]) if f"loss_recovered_at_{o}" in spans]
    undefined: list[str] = []
    proxies = []
    for j, o in enumerate(lr_offsets):
        key = f"loss_recovered_at_{o}"
        ok = spans[f"loss_recovered_defined_at_{o}"].astype(bool)
        bad = sorted(int(k) for k in spans.loc[~ok, "span"].unique())
        if bad:
            undefined.append(f"offset {o}: k = {', '.join(map(str, bad))}")
        marker, ls = OFFSET_MARKERS[j % len(OFFSET_MARKERS)], _OFFSET_STYLES[j % len(_OFFSET_STYLES)]
        shown = False
        for c in conds:
            sub = spans[(spans["condition"] == c) & ok].sort_values("span")
            if not np.isfinite(sub[key].to_numpy(dtype=np.float64)).any():
                continue
            _errorbar(ax, sub["span"], sub[key], sub[f"{key}_lo"], sub[f"{key}_hi"], color=PALETTE[c],
                      label=f"{LABELS[c]}, offset {o}", marker=marker, ls=ls)
            shown = True
        if shown:
            proxies.append(plt.Line2D([], [], color="#444444", marker=marker, ls=ls, label=f"offset {o}"))
    ax.axhline(1.0, color="#777777", ls=":", lw=1)
    _span_axis(ax, ks)
    ax.set_ylabel(f"loss recovered vs {LABELS[HEADLINE_FLOOR]},\n1 − mean ΔCE / mean ΔCE(floor)")
    ax.set_title("loss recovered after the span", fontsize=10)
    if proxies:
        ax.legend(handles=proxies, loc="best", fontsize=8, frameon=True, framealpha=0.85)
    if undefined:
        ax.set_xlabel(ax.get_xlabel() + "\nundefined (floor's mean ΔCE CI ≤ 0), not shown:\n" + "\n".join(undefined),
                      fontsize=9)
    fig.suptitle("Damage after a span of k patched positions (offsets counted from the span's last position; "
                 "offset 0 = first token after the span)", fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", ncol=4, frameon=False, fontsize=9,
                   bbox_to_anchor=(0.5, 1 - 0.35 / fig.get_figheight()))
        fig.tight_layout(rect=(0, 0, 1, 1 - (0.3 + 0.2 * math.ceil(len(handles) / 4)) / fig.get_figheight()))
    else:
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))
    return fig


def fig_layers(
    layers: pd.DataFrame,
    width: float = 13.0,
    height: float = 4.2,
    kl_floor: float = 1e-6,
) -> plt.Figure:
    """Where in depth does a route's reconstruction hold? Three panels against layer, CIs as error bars.

    ``layers`` is :func:`causal_kl.tables.layers_table`'s output. Panels: median KL@0 (log y, 0 drawn
    at ``kl_floor``) of each route's gold-norm reconstruction and of each floor; loss recovered (vs
    cross-doc resample) per route, undefined points omitted and listed; FVE per route. ``width`` and
    ``height`` are the whole figure's, in inches.
    """
    _theme()
    fig, (a1, a2, a3) = _grid(3, width / 3, height, max_cols=3)
    layers = layers.assign(route=layers["route"].fillna("").astype(str))  # the floors' route "" reads back from CSV as NaN
    routes = sorted(r for r in layers["route"].unique() if r != "")
    colors = dict(zip(routes, _palette("deep", len(routes)) if len(routes) > 1 else [PALETTE[RECON]]))
    ls_all = sorted(int(x) for x in layers["layer"].unique()) if len(layers) else [0]
    undefined: list[str] = []
    for route in routes:
        sub = layers[(layers["route"] == route) & (layers["condition"] == RECON)].sort_values("layer")
        _errorbar(a1, sub["layer"], *(_at_floor(sub[f"kl0_median{s}"], kl_floor) for s in ("", "_lo", "_hi")),
                  color=colors[route], marker="o", ls="-", label=f"{route}: {LABELS[RECON]}")
        ok = sub["loss_recovered_defined"].astype(bool) if "loss_recovered_defined" in sub else \
            pd.Series(True, index=sub.index)
        if (~ok).any():
            undefined.append(f"{route}: L = {', '.join(str(int(x)) for x in sub.loc[~ok, 'layer'])}")
        d = sub[ok]
        _errorbar(a2, d["layer"], d["loss_recovered"], d["loss_recovered_lo"], d["loss_recovered_hi"],
                  color=colors[route], marker="o", ls="-", label=route)
        a3.plot(sub["layer"], sub["fve"].to_numpy(dtype=np.float64), marker="o", color=colors[route], label=route)
    for c in FLOOR_CONDITIONS:
        sub = layers[(layers["route"] == "") & (layers["condition"] == c)].sort_values("layer")
        if len(sub):
            _errorbar(a1, sub["layer"], *(_at_floor(sub[f"kl0_median{s}"], kl_floor) for s in ("", "_lo", "_hi")),
                      color=PALETTE[c], marker="s", ls="--", label=LABELS[c])
    a1.set_yscale("log")
    _log_ticks(a1.yaxis, _at_floor(layers[["kl0_median", "kl0_median_lo", "kl0_median_hi"]], kl_floor))
    a1.set_ylabel(f"median KL@0, nats (0 drawn at {kl_floor:g})")
    a1.set_title("median KL@0: reconstruction and floors", fontsize=10)
    a2.axhline(1.0, color="#777777", ls=":", lw=1)
    a2.set_ylabel(f"loss recovered vs {LABELS[HEADLINE_FLOOR]}")
    a2.set_title(f"loss recovered, {LABELS[RECON]}", fontsize=10)
    a3.set_ylabel("FVE")
    a3.set_title("FVE", fontsize=10)
    for ax in (a1, a2, a3):
        ax.set_xticks(ls_all)
        ax.set_xlabel("layer L (output of block L)")
    if undefined:
        a2.set_xlabel(a2.get_xlabel() + "\nundefined (floor's mean ΔCE CI ≤ 0), not shown: " + "; ".join(undefined),
                      fontsize=9)
    handles, labels = a1.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", ncol=4, frameon=False, fontsize=9)
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.2 * (1 + len(handles) // 4) / fig.get_figheight()))
    else:
        fig.tight_layout()
    return fig


FRONTIER_X = {"l0": ("l0", "L0 (mean active latents; lower is sparser)"),
              "fve": ("fve", "FVE (higher is closer in direction)")}
FRONTIER_Y = {"kl0": ("kl0_median", "median KL@0, nats (reconstruction at gold norm)", True),
              "loss": ("loss_recovered", "loss recovered vs cross-doc resample", False),
              "saelens": ("saelens_kl_div_score", "SAELens' kl_div_score (whole context)", False)}
"""The frontier figures' axes: (column, label[, log scale])."""


def _frontier_line(ax, x, y, on, color, log_x: bool) -> None:
    """The frontier of one panel: its points joined in order of the x axis."""
    idx = np.flatnonzero(on)
    if len(idx) > 1:
        idx = idx[np.argsort(x[idx], kind="stable")]
        ax.plot(x[idx], y[idx], color=color, lw=1.2, ls="--", zorder=1)


def _frontier_x_axis(ax, values: np.ndarray, key: str) -> None:
    v = values[np.isfinite(values) & (values > 0)]
    if key == "l0" and v.size and v.max() / v.min() > 4:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda t, _: f"{t:g}"))


def fig_frontier(frontier: pd.DataFrame, width: float = 11.0, height: float = 11.0, kl_floor: float = 1e-6,
                 ) -> plt.Figure:
    """One layer's sparsity–damage frontier: every route as a point, three rows of damage (median KL@0, loss
    recovered, SAELens' kl_div_score) against two sparsity axes (L0, FVE), 95% CIs as error bars.

    ``frontier`` is :func:`causal_kl.frontier.frontier_table`'s output. In each panel the routes on that pair's
    frontier are filled and joined by a dashed line; the others are hollow. A route without an L0 is absent from
    the L0 column; a panel with nothing to show says why.
    """
    _theme()
    fig, axes = plt.subplots(len(FRONTIER_Y), len(FRONTIER_X), figsize=(width, height), squeeze=False)
    routes = frontier["route"].astype(str).tolist()
    colors = dict(zip(routes, _palette("deep", max(len(routes), 1))))
    for j, (xkey, (xcol, xlabel)) in enumerate(FRONTIER_X.items()):
        x = frontier[xcol].to_numpy(dtype=np.float64)
        for i, (ykey, (ycol, ylabel, log_y)) in enumerate(FRONTIER_Y.items()):
            ax = axes[i][j]
            y = frontier[ycol].to_numpy(dtype=np.float64)
            lo = frontier[f"{ycol}_lo"].to_numpy(dtype=np.float64) if f"{ycol}_lo" in frontier else np.full_like(y, np.nan)
            hi = frontier[f"{ycol}_hi"].to_numpy(dtype=np.float64) if f"{ycol}_hi" in frontier else np.full_like(y, np.nan)
            if log_y:
                y, lo, hi = (_at_floor(a, kl_floor) for a in (y, lo, hi))
            on = frontier[f"frontier_{xkey}_{ykey}"].astype(bool).to_numpy()
            if ykey == "loss" and "loss_recovered_defined" in frontier and not frontier["loss_recovered_defined"].all():
                y = np.full_like(y, np.nan)
            ok = np.isfinite(x) & np.isfinite(y)
            for k in np.flatnonzero(ok):
                err = None
                if np.isfinite(lo[k]) and np.isfinite(hi[k]):
                    err = [[max(y[k] - lo[k], 0.0)], [max(hi[k] - y[k], 0.0)]]
                ax.errorbar([x[k]], [y[k]], yerr=err, fmt="o", ms=8, capsize=3, lw=1, color=colors[routes[k]],
                            mfc=colors[routes[k]] if on[k] else "white", mew=1.6, zorder=3)
            _frontier_line(ax, x, y, on & ok, "#333333", xkey == "l0")
            if not ok.any():
                why = ("no route of this layer has an L0 (only SAE routes do)" if xkey == "l0" and not np.isfinite(x).any()
                       else "loss recovered is not a score here (the floor's mean ΔCE@0 CI is not above 0)"
                       if ykey == "loss" else "no route has this score")
                ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, fontsize=9, wrap=True)
            else:
                _frontier_x_axis(ax, x[ok], xkey)
                if log_y:
                    ax.set_yscale("log")
                    _log_ticks(ax.yaxis, np.concatenate([y[ok], lo[ok], hi[ok]]))
            if i == len(FRONTIER_Y) - 1:
                ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel, fontsize=9)
    axes[0][0].set_title("against L0", fontsize=10)
    axes[0][1].set_title("against FVE", fontsize=10)
    handles = [plt.Line2D([], [], ls="", marker="o", ms=8, color=colors[r], label=r) for r in routes]
    handles += [plt.Line2D([], [], ls="--", marker="o", ms=8, color="#333333", label="on the frontier"),
                plt.Line2D([], [], ls="", marker="o", ms=8, color="#333333", mfc="white", mew=1.6, label="dominated")]
    fig.suptitle("Sparsity–damage frontier (filled, dashed: no other route is better on both axes)", fontsize=11)
    ncol = min(len(handles), 8)
    fig.legend(handles=handles, loc="upper center", ncol=ncol, frameon=False, fontsize=9,
               bbox_to_anchor=(0.5, 1 - 0.35 / height))
    fig.tight_layout(rect=(0, 0, 1, 1 - (0.45 + 0.22 * math.ceil(len(handles) / ncol)) / height))
    return fig


def fig_frontier_layers(frontier: pd.DataFrame, width: float = 11.0, height: float = 8.0, kl_floor: float = 1e-6,
                        ) -> plt.Figure:
    """Every layer's frontier in one figure: median KL@0 and loss recovered (rows) against L0 and FVE (columns);
    one colour per layer, the routes on that layer's frontier filled, labelled and joined, the others hollow.

    ``frontier`` is :func:`causal_kl.frontier.frontier_layers`' output (damage is compared within a layer only)."""
    _theme()
    rows = {k: FRONTIER_Y[k] for k in ("kl0", "loss")}
    fig, axes = plt.subplots(len(rows), len(FRONTIER_X), figsize=(width, height), squeeze=False)
    layers = sorted(int(l) for l in frontier["layer"].unique()) if len(frontier) else []
    colors = dict(zip(layers, _palette("viridis", max(len(layers), 1))))
    for j, (xkey, (xcol, xlabel)) in enumerate(FRONTIER_X.items()):
        for i, (ykey, (ycol, ylabel, log_y)) in enumerate(rows.items()):
            ax = axes[i][j]
            shown = np.array([], dtype=np.float64)
            for layer in layers:
                sub = frontier[frontier["layer"] == layer]
                x = sub[xcol].to_numpy(dtype=np.float64)
                y = sub[ycol].to_numpy(dtype=np.float64)
                if log_y:
                    y = _at_floor(y, kl_floor)
                if ykey == "loss" and "loss_recovered_defined" in sub and not sub["loss_recovered_defined"].all():
                    continue
                on = sub[f"frontier_{xkey}_{ykey}"].astype(bool).to_numpy()
                ok = np.isfinite(x) & np.isfinite(y)
                c = colors[layer]
                ax.scatter(x[ok & ~on], y[ok & ~on], s=40, facecolors="white", edgecolors=[c], linewidths=1.4, zorder=2)
                ax.scatter(x[ok & on], y[ok & on], s=48, color=c, zorder=3,
                           label=f"layer {layer}" if (i, j) == (0, 1) else None)
                _frontier_line(ax, x, y, on & ok, c, xkey == "l0")
                for k in np.flatnonzero(ok & on):
                    ax.annotate(str(sub["route"].iloc[k]), (x[k], y[k]), xytext=(4, 3), textcoords="offset points",
                                fontsize=7, color=c)
                shown = np.concatenate([shown, x[ok]])
            if shown.size:
                _frontier_x_axis(ax, shown, xkey)
                if log_y:
                    ax.set_yscale("log")
                    ax.yaxis.set_major_formatter(FuncFormatter(lambda t, _: f"{t:g}"))
            else:
                ax.text(0.5, 0.5, "no route has an L0 (only SAE routes do)" if xkey == "l0" else "nothing to show",
                        ha="center", va="center", transform=ax.transAxes, fontsize=9)
            if i == len(rows) - 1:
                ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel, fontsize=9)
    handles, labels = axes[0][1].get_legend_handles_labels()
    fig.suptitle("Sparsity–damage frontier of every layer (filled, labelled: on that layer's frontier)", fontsize=11)
    if handles:
        fig.legend(handles, labels, loc="upper center", ncol=min(len(handles), 8), frameon=False, fontsize=9,
                   bbox_to_anchor=(0.5, 1 - 0.35 / height))
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.75 / height))
    else:
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / height))
    return fig


def save(fig: plt.Figure, png: str | Path, svg: str | Path | None = None, dpi: int = 150) -> None:
    """Write ``fig`` to PNG (and SVG) atomically and close it."""
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    if svg is not None:
        with atomic_path(svg) as tmp:
            fig.savefig(tmp, format="svg", bbox_inches="tight")
    plt.close(fig)


__all__ = ["FIG2_CONDITIONS", "OFFSET_MARKERS", "PALETTE", "fig1_geometry_vs_kl", "fig2_damage_per_energy",
           "fig3_kl_by_offset", "fig_frontier", "fig_frontier_layers", "fig_layers", "fig_routes", "fig_spans",
           "save"]
