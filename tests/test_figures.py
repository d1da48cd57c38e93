"""Each figure is written as a non-empty PNG and SVG, for one route and for several."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from causal_kl import figures
from synthetic_results import build_outputs, make_results


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("figs")
    R = make_results(root, routes=("toy", "toy2"))
    files = build_outputs(R, routes=("toy", "toy2"))
    return R, files


def _png_ok(path, min_bytes=5000):
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) > min_bytes, path


def _svg_ok(path):
    text = path.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text and len(text) > 5000, path


@pytest.mark.parametrize("name", ["fig1_geometry_vs_kl", "fig2_damage_per_energy", "fig3_kl_by_offset"])
def test_route_figures_written(run, name):
    R, _ = run
    for r in ("toy", "toy2"):
        _png_ok(R / f"figures/{r}/{name}.png")
        _svg_ok(R / f"figures/{r}/{name}.svg")


def test_routes_comparison_written(run):
    R, _ = run
    _png_ok(R / "figures/routes_comparison.png")
    _svg_ok(R / "figures/routes_comparison.svg")


def test_multi_route_panels(run, tmp_path):
    R, _ = run
    data = {r: pd.read_parquet(R / f"analysis/{r}/per_site.parquet") for r in ("toy", "toy2")}
    corr = {r: json.loads((R / f"stats/{r}/correlation.json").read_text()) for r in ("toy", "toy2")}
    fig = figures.fig1_geometry_vs_kl(data, corr, subsample=10)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 2
    assert "ρ" in visible[0].get_title() and "10 of" in visible[0].get_title()
    figures.save(fig, tmp_path / "f.png", tmp_path / "f.svg", dpi=60)
    _png_ok(tmp_path / "f.png", 1000)
    energy = {r: json.loads((R / f"stats/{r}/energy.json").read_text()) for r in ("toy", "toy2")}
    fig2 = figures.fig2_damage_per_energy(energy)
    labels = [t.get_text() for t in fig2.axes[0].get_xticklabels()]
    assert len(labels) == 4 and all(len(line) <= 14 for lab in labels for line in lab.split("\n"))
    figures.save(fig2, tmp_path / "g.png", None, dpi=60)
    _png_ok(tmp_path / "g.png", 1000)


def test_the_theme_and_palettes_are_seaborns_and_no_figure_job_imports_seaborn_or_scipy_stats():
    """The figures keep seaborn's whitegrid look (its settings, held equal to seaborn's own) without importing seaborn,
    whose import of scipy.stats was about a third of a figure job's CPU time."""
    import subprocess
    import sys

    import matplotlib as mpl
    from matplotlib.colors import to_hex

    sns = pytest.importorskip("seaborn")
    with mpl.rc_context():
        mpl.rcdefaults()
        sns.set_theme(style="whitegrid", context="notebook", font_scale=1.0)
        theirs = dict(mpl.rcParams)
    with mpl.rc_context():
        mpl.rcdefaults()
        figures._theme()
        ours = dict(mpl.rcParams)
    # seaborn's colormap (image.cmap) is its own; no figure draws an image
    assert {k for k in theirs if ours[k] != theirs[k]} <= {"axes.prop_cycle", "image.cmap"}
    cycle = lambda rc: [to_hex(c) for c in rc["axes.prop_cycle"].by_key()["color"]]  # noqa: E731
    assert cycle(ours) == cycle(theirs)
    for n in (1, 3, 8, 12):
        for name in ("deep", "viridis"):
            assert [to_hex(c) for c in figures._palette(name, n)] == sns.color_palette(name, n).as_hex(), (name, n)
    probe = ("import sys, causal_kl.jobs.figures; "
             "print(sorted(m for m in ('seaborn', 'scipy.stats') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
