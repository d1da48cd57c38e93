"""Jobs of ``rules/figures.smk``: the write-up's three figures per route and for all routes, and the route comparison."""

from __future__ import annotations

from causal_kl import figures
from causal_kl.io import read_csv, read_json, read_per_site


def _fig1(per_site: dict, correlation: dict, png: str, svg: str, dpi: int, style: dict) -> None:
    data = {r: read_per_site(p, figures.FIG1_COLUMNS) for r, p in per_site.items()}
    corr = {r: read_json(p) for r, p in correlation.items()}
    figures.save(figures.fig1_geometry_vs_kl(data, corr, **style), png, svg, dpi)


def _fig2(energy: dict, png: str, svg: str, dpi: int, style: dict) -> None:
    figures.save(figures.fig2_damage_per_energy({r: read_json(p) for r, p in energy.items()}, **style), png, svg, dpi)


def _fig3(offsets: dict, png: str, svg: str, dpi: int, style: dict) -> None:
    figures.save(figures.fig3_kl_by_offset({r: read_csv(p) for r, p in offsets.items()}, **style), png, svg, dpi)


def fig1_route(per_site: str, correlation: str, png: str, svg: str, dpi: int, style: dict, layer: str, route: str) -> None:
    """Figure 1 of one route: direction-MSE vs KL@0 per site."""
    _fig1({route: per_site}, {route: correlation}, png, svg, dpi, style)


def fig2_route(energy: str, png: str, svg: str, dpi: int, style: dict, layer: str, route: str) -> None:
    """Figure 2 of one route: damage per unit squared error norm, noise = 1."""
    _fig2({route: energy}, png, svg, dpi, style)


def fig3_route(offsets: str, png: str, svg: str, dpi: int, style: dict, layer: str, route: str) -> None:
    """Figure 3 of one route: median KL by offset."""
    _fig3({route: offsets}, png, svg, dpi, style)


def fig1_all(per_site: list[str], correlation: list[str], png: str, svg: str, dpi: int, style: dict,
             routes: list[str], layer: str) -> None:
    """Figure 1, one panel per route of the run."""
    _fig1(dict(zip(routes, per_site)), dict(zip(routes, correlation)), png, svg, dpi, style)


def fig2_all(energy: list[str], png: str, svg: str, dpi: int, style: dict, routes: list[str], layer: str) -> None:
    """Figure 2, every route of the run side by side."""
    _fig2(dict(zip(routes, energy)), png, svg, dpi, style)


def fig3_all(offsets: list[str], png: str, svg: str, dpi: int, style: dict, routes: list[str], layer: str) -> None:
    """Figure 3, one panel per route of the run."""
    _fig3(dict(zip(routes, offsets)), png, svg, dpi, style)


def fig_routes(routes_table: str, png: str, svg: str, dpi: int, style: dict, layer: str) -> None:
    """Multi-route comparison: loss recovered and median KL@0 per route, with CIs."""
    figures.save(figures.fig_routes(read_csv(routes_table), **style), png, svg, dpi)


def fig3_span(offsets: str, png: str, svg: str, dpi: int, style: dict, layer: str, route: str, span: str) -> None:
    """Figure 3 for a span of k positions: median KL by offset from the span's last position (inside the span shaded)."""
    figures.save(figures.fig3_kl_by_offset({f"{route}, span {span}": read_csv(offsets)}, inside_span=True, **style),
                 png, svg, dpi)


def fig_spans(spans: str, png: str, svg: str, dpi: int, style: dict, layer: str, route: str) -> None:
    """Median KL after the span and loss recovered against span length, per condition, with CIs.

    The direct answer to "is a position's payload read beyond itself?"."""
    figures.save(figures.fig_spans(read_csv(spans), **style), png, svg, dpi)


def fig_layers(layers: str, png: str, svg: str, dpi: int, style: dict) -> None:
    """A sweep's layers: median KL@0 and loss recovered per route and floor, and FVE, against layer."""
    figures.save(figures.fig_layers(read_csv(layers), **style), png, svg, dpi)


def fig_frontier(frontier: str, png: str, svg: str, dpi: int, style: dict, layer: str) -> None:
    """A layer's sparsity–damage frontier: median KL@0, loss recovered and SAELens' kl_div_score against L0 and FVE."""
    figures.save(figures.fig_frontier(read_csv(frontier), **style), png, svg, dpi)


def fig_frontier_layers(frontier: str, png: str, svg: str, dpi: int, style: dict) -> None:
    """Every layer's sparsity–damage frontier in one figure, one colour per layer."""
    figures.save(figures.fig_frontier_layers(read_csv(frontier), **style), png, svg, dpi)
