"""The report: self-contained, the gate at the top (red when failed), every section, reference columns only on request."""

from __future__ import annotations

import re

import pandas as pd

from causal_kl.report import build_report
from synthetic_results import build_outputs, make_results


def _build(root, reference=False, gate_ok=True):
    R = make_results(root, routes=("toy", "other-route"), gate_ok=gate_ok)
    files = build_outputs(R, routes=("toy", "other-route"), reference=reference)
    html = build_report(R.parent / "run.json", files, R / "report.html", reference=reference)
    return R, html


def test_report_is_self_contained_with_every_section(tmp_path):
    R, html = _build(tmp_path)
    assert (R / "report.html").read_text() == html
    srcs = re.findall(r'src="([^"]*)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    hrefs = re.findall(r"href=['\"]([^'\"]*)['\"]", html)
    assert all(h.startswith("#") for h in hrefs)
    assert "<link" not in html and "<script" not in html and "@import" not in html and "url(" not in html
    for rid in ("toy", "other-route"):
        for sec in ("route", "conditions", "geometry", "quartiles", "energy", "offsets", "token_classes", "statistics"):
            assert f"id='{sec}-L3-{rid}'" in html, (sec, rid)
    assert html.count("<img") == 3 * 2 + 1  # three figures per route + the routes comparison
    assert "id='provenance'" in html and "abc123" in html  # config hash
    assert "not reproducible from its own definition" in html  # the floor-row loss-recovered note
    assert "_published" not in html.replace("<wbr>", "")


def test_gate_is_first_and_red_when_failed(tmp_path):
    _, html = _build(tmp_path, gate_ok=False)
    assert html.index("id=\"gate\"") < html.index("Provenance") < html.index("id='comparison-3'")
    assert 'class="gate fail"' in html and "FLOOR CHECK FAILED" in html and "✗" in html


def test_gate_passes_green(tmp_path):
    _, html = _build(tmp_path, gate_ok=True)
    assert 'class="gate pass"' in html and "✓" in html


def test_reference_columns_only_when_shown(tmp_path):
    R, html = _build(tmp_path, reference=True)
    cond = pd.read_csv(R / "tables/toy/conditions.csv")
    assert {"kl0_median_published", "kl0_median_diff", "loss_recovered_vs_resample_cross_doc_published"} <= set(cond)
    assert "ratio_median_published" in pd.read_csv(R / "tables/toy/quartiles.csv")
    assert "kl0_median_recon_goldnorm_published" in pd.read_csv(R / "tables/toy/token_classes.csv")
    assert "resample_cross_doc_published" in pd.read_csv(R / "tables/toy/offsets.csv")
    text = html.replace("<wbr>", "")  # headers may break at underscores
    assert "kl0_median_published" in text and ">published<" in text  # tables and the statistics table
