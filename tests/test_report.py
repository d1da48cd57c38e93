"""The report: a self-contained main page (gate first, red when failed; provenance; per layer the routes table, the
comparison figures and the frontier) linking to one self-contained page per route, which links back; each figure
embedded as the smaller of its PNG and SVG; the gate's bounds as a reader wants them; reference columns only on
request; and a 10-route x 8-layer suite whose main page stays under 10 MB."""

from __future__ import annotations

import base64
import io
import re
from html import unescape
import shutil
import urllib.parse
import xml.etree.ElementTree as ET
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from causal_kl.report import build_report, embed_figure, minify_svg  # noqa: E402
from synthetic_results import build_outputs, make_results  # noqa: E402

ROUTES = ("toy", "other-route")
SECTIONS = ("route", "conditions", "geometry", "quartiles", "energy", "offsets", "token_classes", "statistics")


def _build(root, reference=False, gate_ok=True, expected_fve=None):
    R = make_results(root, routes=ROUTES, gate_ok=gate_ok)
    manifest = build_outputs(R, routes=ROUTES, reference=reference, expected_fve=expected_fve)
    main = R.parent / "report.html"
    html = build_report(R.parent / "run.json", manifest, main, reference=reference)
    return R, html, manifest


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("report"))


def _external(html: str) -> bool:
    """Whether a page reaches for anything outside itself (embedded figures aside: an SVG names its namespaces)."""
    html = re.sub(r'src="data:[^"]*"', "", html)
    return any(s in html for s in ("<link", "<script", "@import", "url(", "http://", "https://"))


def _srcs(html: str) -> list[str]:
    return re.findall(r'src="([^"]*)"', html)


def _hrefs(html: str) -> list[str]:
    return re.findall(r"href=['\"]([^'\"]*)['\"]", html)


def _ids(html: str) -> set[str]:
    return set(re.findall(r"id=['\"]([^'\"]*)['\"]", html))


def test_main_page_is_self_contained_and_links_every_route_page(built):
    R, html, manifest = built
    main = R.parent / "report.html"
    assert main.read_text() == html and not _external(html)
    assert all(s.startswith(("data:image/png;base64,", "data:image/svg+xml;")) for s in _srcs(html))
    # the comparison figures (routes, fig1-3 of all routes) and the frontier; no route's own figure
    assert len(_srcs(html)) == 5
    for sec in ("comparison-3", "frontier-3", "provenance", "gate", "route-L3-toy", "route-L3-other-route"):
        assert sec in _ids(html), sec
    assert "abc123" in html  # the config hash, in the provenance
    links = [h for h in _hrefs(html) if not h.startswith("#")]
    assert sorted(set(links)) == ["report/L3/other-route.html", "report/L3/toy.html"]
    for h in _hrefs(html):  # every in-page link has its anchor
        assert not h.startswith("#") or h[1:] in _ids(html), h
    for route in ROUTES:
        page = main.parent / f"report/L3/{route}.html"
        text = page.read_text()
        assert not _external(text) and len(_srcs(text)) == 3  # fig1, fig2, fig3 of the route
        for sec in SECTIONS:
            assert f"{sec}-L3-{route}" in _ids(text), (sec, route)
        back = {h for h in _hrefs(text) if not h.startswith("#")}
        assert back == {"../../report.html#comparison-3", "../../report.html#gate", f"../../report.html#route-L3-{route}"}
        for h in back:  # each link back lands on an anchor of the main page
            target, anchor = h.split("#")
            assert (page.parent / target).resolve() == main.resolve() and anchor in _ids(html)
        assert "not reproducible from its own definition" in text  # the floor-row loss-recovered note
        assert "_published" not in text.replace("<wbr>", "")
    # no route's details on the main page
    assert "id='conditions-L3-toy'" not in html and "Quartiles of geometric error" not in html


def test_gate_is_first_and_red_when_failed(tmp_path):
    _, html, _ = _build(tmp_path, gate_ok=False)
    assert html.index("id=\"gate\"") < html.index("Provenance") < html.index("id='comparison-3'")
    assert 'class="gate fail"' in html and "FLOOR CHECK FAILED" in html and "✗" in html


def test_gate_passes_green(built):
    _, html, _ = built
    assert 'class="gate pass"' in html and "✓" in html


def _gate_rows(html: str) -> dict[str, list[str]]:
    """The gate table's rows: check label -> its cells' text."""
    gate = html[html.index('id="gate"'):]
    gate = gate[:gate.index("</table>")]
    rows = {}
    for tr in re.findall(r"<tr>(.*?)</tr>", gate, re.S):
        cells = [unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<td[^>]*>(.*?)</td>", tr, re.S)]
        if cells:
            rows[cells[1]] = cells
    return rows


def test_gate_bounds_read_as_bounds_never_none(tmp_path):
    """An FVE row shows its stated expectation and tolerance, or a dash when none is stated; never 'None'."""
    expected = {"toy": {"expected_fve": 0.5, "fve_tolerance": 0.25}}
    R, html, _ = _build(tmp_path, expected_fve=expected)
    rows = _gate_rows(html)
    assert "None" not in "".join(c for cells in rows.values() for c in cells)
    fve = {label.split()[1]: cells for label, cells in rows.items() if label.startswith("FVE")}
    assert fve["toy"][3] == "0.5000 ± 0.25" and fve["other-route"][3] == "–"
    assert "no expected FVE stated" in fve["other-route"][4]
    assert rows["re-extract cos>0.999"][3] == "> 0.999"
    (gold,) = [cells for label, cells in rows.items() if label.startswith("gold repatch")]
    assert gold[3] == "≤ 0.01 nats"


def test_reference_columns_only_when_shown(tmp_path):
    R, html, _ = _build(tmp_path, reference=True)
    cond = pd.read_csv(R / "tables/toy/conditions.csv")
    assert {"kl0_median_published", "kl0_median_diff", "loss_recovered_vs_resample_cross_doc_published"} <= set(cond)
    assert "ratio_median_published" in pd.read_csv(R / "tables/toy/quartiles.csv")
    assert "kl0_median_recon_goldnorm_published" in pd.read_csv(R / "tables/toy/token_classes.csv")
    assert "resample_cross_doc_published" in pd.read_csv(R / "tables/toy/offsets.csv")
    text = (R.parent / "report/L3/toy.html").read_text().replace("<wbr>", "")  # headers may break at underscores
    assert "kl0_median_published" in text and ">published<" in text  # tables and the statistics table
    assert "_published" in html  # the main page's note


def _decoded(url: str) -> bytes:
    head, data = url.split(",", 1)
    return base64.b64decode(data) if head.endswith(";base64") else urllib.parse.unquote_to_bytes(data)


def test_each_figure_is_embedded_as_the_smaller_of_its_png_and_svg(tmp_path):
    """A line plot is smaller as SVG, a scatter of many points as PNG; the embedded bytes are the file's own (the
    SVG minified only between tags, and still well-formed XML)."""
    rng = np.random.default_rng(0)
    made = {}
    for name, draw in (("line", lambda ax: ax.plot([0, 1, 2], [1, 3, 2])),
                       ("scatter", lambda ax: ax.scatter(rng.random(20000), rng.random(20000), s=2))):
        fig, ax = plt.subplots(figsize=(4, 3))
        draw(ax)
        ax.set_title(f"{name} #1 & <test> 100%")  # characters a data URL must escape
        png, svg = tmp_path / f"{name}.png", tmp_path / f"{name}.svg"
        fig.savefig(png, dpi=100)
        fig.savefig(svg)
        plt.close(fig)
        made[name] = (png, svg)
    for name, (png, svg) in made.items():
        url, fmt, width = embed_figure({"png": str(png), "svg": str(svg)})
        other = embed_figure({"svg": str(svg)} if fmt == "png" else {"png": str(png)})[0]
        assert len(url) <= len(other), name
        if fmt == "png":
            assert _decoded(url) == png.read_bytes()
        elif fmt == "png8":  # the same picture in a palette of at most 256 colours, read back by Pillow
            with Image.open(io.BytesIO(_decoded(url))) as small, Image.open(png) as full:
                assert small.mode == "P" and small.size == full.size and len(small.getcolors(1 << 16)) <= 256
                diff = np.abs(np.asarray(small.convert("RGBA").convert("RGB"), float) - np.asarray(full.convert("RGB"), float))
                assert diff.mean() < 2.0, diff.mean()  # of 255 per channel
        else:
            text = _decoded(url).decode("utf-8")
            assert text == minify_svg(svg.read_text()) and ET.fromstring(text).tag.endswith("svg")
            assert not re.search(r'[#"<>&]|%(?![0-9A-F]{2})', url.split(",", 1)[1])
        assert width == "400px"  # 4 inches at 100 CSS px per inch, from either format
    # a line plot: the SVG or the palette PNG, never matplotlib's RGBA PNG; 20,000 points: never the SVG
    assert embed_figure({"png": str(made["line"][0]), "svg": str(made["line"][1])})[1] in ("svg", "png8")
    assert embed_figure({"png": str(made["scatter"][0]), "svg": str(made["scatter"][1])})[1] in ("png", "png8")
    assert embed_figure({"png": str(tmp_path / "missing.png")}) is None


SUITE_ROUTES = tuple(f"sae_{w}_{k}" for w in ("4k", "16k") for k in (8, 16, 32, 64)) + ("pca", "nla")
SUITE_LAYERS = (5, 10, 15, 20, 25, 30, 35, 40)


@pytest.mark.slow
def test_a_suite_of_10_routes_by_8_layers_keeps_the_main_page_under_10_mb(tmp_path):
    """A Gemma Scope-like suite (8 SAEs at 4 sparsities and 2 widths, plus 2 other routes) at 8 layers, 400 sites.

    One synthetic layer's analysis is built for real (every table, statistic and figure a main page shows, each route's
    L0 and SAELens score); the other layers are copies of its files, which is all the main page's size depends on
    (same routes, sites and figures). The main page must stay at or under 10 MB; a route page is about one route.
    """
    l0 = {r: float(r.rsplit("_", 1)[1]) * (1.1 if "16k" in r else 1.0) for r in SUITE_ROUTES if r.startswith("sae")}
    score = {r: 0.9 + 0.001 * i for i, r in enumerate(SUITE_ROUTES) if r != "nla"}
    first = SUITE_LAYERS[0]
    R0 = make_results(tmp_path, run="suite", routes=SUITE_ROUTES, n_docs=50, per_doc=8, layer=first)
    m0 = build_outputs(R0, routes=SUITE_ROUTES, route_figures=False, pages=False, sae=l0, whole_context=score,
                       n_boot=20, dpi=150)  # the workflow's default dpi
    manifest = {"layers": {}, "across": {}, "spans": [1]}
    frontiers = []
    for layer in SUITE_LAYERS:
        R = R0.parent / f"L{layer}"
        if layer != first:
            shutil.copytree(R0, R)
        spec = m0["layers"][str(first)]

        def here(p):
            return str(p).replace(f"/L{first}/", f"/L{layer}/")

        manifest["layers"][str(layer)] = {
            "gate": here(spec["gate"]),
            "routes": {r: str(R0.parent / f"report/L{layer}/{r}.html") for r in SUITE_ROUTES},
            "comparison": {k: ({f: here(p) for f, p in v.items()} if isinstance(v, dict) else here(v))
                           for k, v in spec["comparison"].items()},
            "frontier": {"table": here(spec["frontier"]["table"]),
                         "figure": {f: here(p) for f, p in spec["frontier"]["figure"].items()}},
        }
        frontiers.append(pd.read_csv(spec["frontier"]["table"]).assign(layer=layer))
    # the across-layer outputs, from their own jobs
    from causal_kl.jobs import figures, tables

    per_layer = [manifest["layers"][str(l)]["frontier"]["table"] for l in SUITE_LAYERS]
    for path, df in zip(per_layer, frontiers):
        df.to_csv(path, index=False)
    across = R0.parent
    tables.table_frontier_layers(frontiers=per_layer, table=str(across / "tables/frontier.csv"), layers=list(SUITE_LAYERS))
    figures.fig_frontier_layers(frontier=str(across / "tables/frontier.csv"), png=str(across / "figures/frontier.png"),
                                svg=str(across / "figures/frontier.svg"), dpi=150, style={})
    conds = [str(R0.parent / f"L{l}/tables/{r}/conditions.csv") for l in SUITE_LAYERS for r in SUITE_ROUTES]
    geos = [str(R0.parent / f"L{l}/geometry/{r}.json") for l in SUITE_LAYERS for r in SUITE_ROUTES]
    tables.table_layers(conditions=conds, geometry=geos, table=str(across / "tables/layers.csv"),
                        pairs=[[l, r] for l in SUITE_LAYERS for r in SUITE_ROUTES])
    figures.fig_layers(layers=str(across / "tables/layers.csv"), png=str(across / "figures/layers.png"),
                       svg=str(across / "figures/layers.svg"), dpi=150, style={})
    manifest["across"] = {"table": str(across / "tables/layers.csv"),
                          "figure": {"png": str(across / "figures/layers.png"), "svg": str(across / "figures/layers.svg")},
                          "frontier": {"table": str(across / "tables/frontier.csv"),
                                       "figure": {"png": str(across / "figures/frontier.png"),
                                                  "svg": str(across / "figures/frontier.svg")}}}
    html = build_report(R0.parent / "run.json", manifest, R0.parent / "report.html")
    size = len(html.encode("utf-8"))
    print(f"suite main page: {size / 1e6:.2f} MB, {len(_srcs(html))} figures")
    assert size <= 10e6, f"main page {size / 1e6:.1f} MB"
    assert len(_srcs(html)) == 8 * 5 + 2  # per layer the routes, fig1-3 and frontier figures; across: layers, frontier
    assert all(f"frontier-{l}" in _ids(html) for l in SUITE_LAYERS) and "frontier-layers" in _ids(html)
    assert len({h for h in _hrefs(html) if h.startswith("report/")}) == 80
