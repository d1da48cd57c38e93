"""The self-contained HTML report of one run: provenance, floor gate, every table, statistic and figure.

Figures are embedded as base64 PNG and the style sheet is inline, so the one file opens
offline and can be mailed around. A failed floor gate is shown at the top in red; the report
is still written. Captions come from ``reports/*.rst`` (the same files ``snakemake --report``
shows), with the reStructuredText markup stripped.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from causal_kl.conditions import CROSS_DOC, HEADLINE_FLOOR, LABELS, RECON, RESAMPLES, SAME_DOC
from causal_kl.io import read_csv, write_text
from causal_kl.records import stats_table
from causal_kl.reference import REFERENCE_DIR, load_reference

CAPTIONS_DIR = Path(__file__).resolve().parent.parent / "reports"

CSS_PATH = CAPTIONS_DIR / "report.css"
"""The report's style sheet, inlined into the page so the one file opens offline."""


def caption(name: str, directory: str | Path = CAPTIONS_DIR) -> str:
    """The caption ``reports/{name}.rst`` as plain text (reST markup and Jinja expressions removed)."""
    path = Path(directory) / f"{name}.rst"
    if not path.exists():
        return ""
    text = path.read_text()
    text = re.sub(r"\{\{.*?\}\}", "", text)
    text = re.sub(r"``(.*?)``", r"\1", text)
    text = re.sub(r"\*\*(.*?)\*\*", r"\1", text)
    text = re.sub(r"\*(.*?)\*", r"\1", text)
    text = re.sub(r":\w+:`(.*?)`", r"\1", text)
    return " ".join(text.split())


def _img(path: str | Path) -> str:
    """A PNG as an inline ``data:`` image, shown at 100 CSS px per inch of the figure (dpi from its pHYs chunk)."""
    raw = Path(path).read_bytes()
    style = ""
    if raw[:8] == b"\x89PNG\r\n\x1a\n":
        width = int.from_bytes(raw[16:20], "big")
        i = raw.find(b"pHYs")
        dpi = int.from_bytes(raw[i + 4:i + 8], "big") * 0.0254 if i > 0 else 100.0
        style = f' style="width:{width * 100.0 / max(dpi, 1.0):.0f}px"'
    data = base64.b64encode(raw).decode("ascii")
    return f'<img alt="{html.escape(Path(path).stem)}"{style} src="data:image/png;base64,{data}">'


def _fmt(v: Any, col: str = "") -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if col in ("n", "n_sites") or col.startswith("n_"):
            return str(int(round(v)))
        if col.startswith("loss_recovered") or col.endswith("loss_recovered") or "share" in col:
            return f"{100 * v:.1f}%"
        if v == 0:
            return "0"
        a = abs(v)
        return f"{v:.4f}" if 1e-3 <= a < 100 else f"{v:.3g}"
    return html.escape(str(v))


def display_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Fold ``x``, ``x_lo``, ``x_hi`` into one ``x [95% CI]`` text column; format numbers."""
    out = {}
    cols = list(df.columns)
    for col in cols:
        if col.endswith("_lo") or col.endswith("_hi"):
            base = col[:-3]
            if base in cols:
                continue
        vals = df[col].tolist()
        if f"{col}_lo" in cols and f"{col}_hi" in cols:
            lo, hi = df[f"{col}_lo"].tolist(), df[f"{col}_hi"].tolist()
            out[col] = [f"{_fmt(v, col)} [{_fmt(a, col)}, {_fmt(b, col)}]" if np.isfinite(a if a is not None else np.nan)
                        else _fmt(v, col) for v, a, b in zip(vals, lo, hi)]
        else:
            base = col.rsplit("_published", 1)[0].rsplit("_diff", 1)[0]
            out[col] = [_fmt(v, base) for v in vals]
    return pd.DataFrame(out)


def _is_text(col: pd.Series) -> bool:
    """A column of text (left-aligned): object columns, and pandas' string dtype (what pandas 3 reads text as)."""
    return col.dtype == object or pd.api.types.is_string_dtype(col.dtype)


def html_table(df: pd.DataFrame, drop: tuple[str, ...] = ()) -> str:
    """A DataFrame as an HTML table; published/diff columns tinted, CI columns folded."""
    df = df[[c for c in df.columns if c not in drop]]
    disp = display_frame(df)
    head = []
    for c in disp.columns:
        cls = "pub" if c.endswith("_published") else "diff" if c.endswith("_diff") else ""
        txt = " txt" if _is_text(df[c]) else ""
        head.append(f'<th class="{cls}{txt}">{html.escape(c).replace("_", "_<wbr>")}</th>')
    body = []
    for _, row in disp.iterrows():
        cells = []
        for c in disp.columns:
            cls = "pub" if c.endswith("_published") else "diff" if c.endswith("_diff") else ""
            txt = " txt" if _is_text(df[c]) else ""
            cells.append(f'<td class="{cls}{txt}">{row[c]}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return "<table><thead><tr>" + "".join(head) + "</tr></thead><tbody>" + "".join(body) + "</tbody></table>"


def gate_html(gate: Mapping[str, Any], label: str | None = None) -> str:
    """The floor-check gate box (of one layer: ``label``): green when every check that ran passed, red otherwise."""
    checks = gate.get("checks", [])
    passed = gate.get("pass")
    if passed is None:
        passed = all(c.get("pass") is not False for c in checks)
    rows = []
    for c in checks:
        ok = c.get("pass")
        mark = '<span class="ok">✓</span>' if ok else ('<span class="bad">✗</span>' if ok is False else "–")
        rows.append(f"<tr><td>{mark}</td><td class='txt'>{html.escape(str(c.get('label', c.get('name'))))}</td>"
                    f"<td>{_fmt(c.get('value'))}</td><td class='txt'>{html.escape(str(c.get('bound')))}</td>"
                    f"<td class='txt'>{html.escape(str(c.get('detail', '')))}</td></tr>")
    title = ("✓ Floor checks passed" if passed else
             "✗ FLOOR CHECK FAILED: the numbers below are not trustworthy until the failing check is fixed")
    if label:
        title = f"{title} ({label})"
    return (f'<div class="gate {"pass" if passed else "fail"}" id="gate"><b>{title}</b>'
            f'<div>{html.escape(str(gate.get("line", "")))}</div>'
            "<table><thead><tr><th></th><th class='txt'>check</th><th>value</th><th class='txt'>bound</th>"
            "<th class='txt'>detail</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
            f'<div class="caption">{html.escape(caption("gate"))}</div></div>')


def provenance_html(run: Mapping[str, Any], n_sites: int | None, routes: list[str], layers: list | None = None,
                    spans: list | None = None) -> str:
    cfg = run.get("config", {}) or {}
    corpus = cfg.get("corpus", {}) or {}
    layers = layers if layers is not None else run.get("layers") or [run.get("layer")]
    items = [
        ("run", run.get("run")), ("model", run.get("model")),
        ("layers" if len(layers) > 1 else "layer", ", ".join(str(l) for l in layers)),
        ("spans", ", ".join(str(k) for k in (spans or run.get("spans") or [1]))),
        ("corpus", f"{corpus.get('name', '?')} · {corpus.get('split', '?')} · rows {corpus.get('rows', '?')}"),
        ("sites", n_sites), ("seed", cfg.get("seed")), ("routes", ", ".join(routes) or "none"),
        ("config hash", run.get("config_hash")), ("code version", run.get("code_version")),
        ("production configuration", run.get("production")),
    ]
    rows = "".join(f"<tr><td class='txt'>{html.escape(k)}</td><td class='txt'>{_fmt(v)}</td></tr>" for k, v in items)
    return f"<table id='provenance'><tbody>{rows}</tbody></table>"


def _figure(path: str | Path | None, cap: str) -> str:
    if not path or not Path(path).exists():
        return f"<p class='caption'>(figure missing: {html.escape(str(path))})</p>"
    return f"<figure>{_img(path)}<figcaption>{html.escape(cap)}</figcaption></figure>"


def _with_ci(v: Any, lo: Any, hi: Any, col: str = "") -> str:
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return _fmt(v, col)
    return f"{_fmt(v, col)} <span class='ci'>[{_fmt(lo, col)}, {_fmt(hi, col)}]</span>"


def _cards(stats: Mapping[str, Any]) -> str:
    """The route's headline tiles; a score whose denominator is not distinguishable from 0 says so instead."""
    h = stats.get("headline", {})
    p = stats.get("paired", {}).get(RECON, {})
    c = stats.get("correlation", {}).get("dmse_vs_kl0", {})
    e = stats.get("energy", {})
    lr = f"loss_recovered_vs_{HEADLINE_FLOOR}"
    if h.get(f"loss_recovered_defined_vs_{HEADLINE_FLOOR}", True):
        loss = (_with_ci(h.get(lr), h.get(f"{lr}_lo"), h.get(f"{lr}_hi"), "loss_recovered"),
                "loss recovered vs cross-doc resample [95% CI]")
    else:
        loss = ("undefined", "loss recovered vs cross-doc resample: the resample's mean ΔCE@0 is not above 0 "
                f"beyond its CI, so the ratio is not a score (value {_fmt(h.get(lr), 'loss_recovered')})")
    a = e.get("alpha", {}).get(CROSS_DOC, {}).get(RECON)
    a_ci = e.get("alpha_ci", {}).get(CROSS_DOC, {}).get(RECON, {})
    if a_ci and not a_ci.get("defined", True):
        alpha = ("undefined", "mixture α: the cross-doc anchor is not more damaging per unit energy than noise "
                              f"beyond its CI (value {_fmt(a, 'share')})")
    else:
        note = "" if a is None or not np.isfinite(a) or 0 <= a <= 1 else "; outside [0, 1]: the mixture model does not fit"
        alpha = (_with_ci(a, a_ci.get("lo"), a_ci.get("hi"), "share"), f"mixture α (cross-doc anchor) [95% CI]{note}")
    cards = [
        loss,
        (_fmt(h.get("median_kl0_recon")), "median KL@0, reconstruction (nats)"),
        (_fmt(h.get("median_kl0_gold_floor")), "gold-repatch floor, median KL@0"),
        (_fmt(h.get("fve")), "FVE"),
        (_fmt(c.get("rho")), "Spearman ρ, direction-MSE vs KL@0"),
        (_with_ci(p.get("median_ratio"), p.get("median_ratio_lo"), p.get("median_ratio_hi")) + "×",
         "paired recon / noise KL, median [95% CI]"),
        alpha,
    ]
    return "<div class='cards'>" + "".join(
        f"<div class='card'><div class='v'>{v}</div><div class='l'>{html.escape(l)}</div></div>" for v, l in cards
    ) + "</div>"


def _anchor(*names: Any) -> str:
    return "-".join(re.sub(r"[^A-Za-z0-9_-]", "-", str(n)) for n in names)


SAELENS_ROWS = (
    ("kl_div_score", "kl_div_score = (KL_zero − KL_route) / KL_zero"),
    ("ce_loss_score", "ce_loss_score = (CE_zero − CE_route) / (CE_zero − CE_clean)"),
    ("kl_route", "KL with the reconstruction (nats per token; SAELens' kl_div_with_sae)"),
    ("kl_zero", "KL with zero ablation (kl_div_with_ablation)"),
    ("ce_clean", "CE clean (ce_loss_without_sae)"),
    ("ce_route", "CE with the reconstruction (ce_loss_with_sae)"),
    ("ce_zero", "CE with zero ablation (ce_loss_with_ablation)"),
    ("n_tokens_kl", "tokens scored (KL)"),
)
"""The whole-context record's values, as the report names them."""


def saelens_html(files: Mapping[str, Any]) -> str:
    """The route's SAELens-comparable whole-context scores (and an SAE's L0 / dead latents), labelled as SAELens'."""
    parts = []
    if files.get("whole_context") and Path(files["whole_context"]).exists():
        wc = json.loads(Path(files["whole_context"]).read_text())
        if wc.get("skipped"):
            parts.append(f"<p class='caption'>SAELens-comparable scores: not computed for this route: "
                         f"{html.escape(str(wc['skipped']))}.</p>")
        else:
            rows = pd.DataFrame([(label, _fmt(wc.get(key), key)) for key, label in SAELENS_ROWS],
                                columns=["SAELens' definition", "value"])  # formatted here: a count stays a count
            parts.append(html_table(rows))
            parts.append(f"<div class='caption'>{html.escape(caption('saelens'))} Contexts: {wc.get('n_contexts')} of "
                         f"{wc.get('n_ctx')} tokens from the run's documents"
                         + (f" ({html.escape(wc['note'])})" if wc.get("note") else "") + ".</div>")
    if files.get("sae") and Path(files["sae"]).exists():
        sp = json.loads(Path(files["sae"]).read_text())
        rows = pd.DataFrame([("L0 (mean active latents per gold)", sp.get("l0")),
                             ("dead latents (never active on the eval golds)", f"{sp.get('n_dead')} of {sp.get('d_sae')}"),
                             ("dead-latent share", sp.get("dead_share")),
                             ("explained variance (SAELens' definition)", sp.get("explained_variance")),
                             ("architecture", sp.get("architecture")), ("hook", sp.get("hook_name")),
                             ("SAE", sp.get("sae_path"))], columns=["SAE on the eval golds", "value"])
        parts.append(html_table(rows))
    return "\n".join(parts)


def spans_html(route: str, spans: Mapping[str, Any], aid: str) -> str:
    """The route's span section: the span comparison (table and figure), then per span its §2 table and §5 curve."""
    parts = [f"<h3 id='spans-{aid}'>Span splices: is a position's payload read beyond itself?</h3>",
             f"<div class='caption'>{html.escape(caption('spans'))}</div>"]
    if Path(spans["table"]).exists():
        table = read_csv(spans["table"])
        keep = [c for c in table.columns if c in ("span", "label", "n_sites", "n_excluded")
                or c.startswith("kl_median_at_") or (c.startswith("loss_recovered_at_0"))]
        parts.append(html_table(table[keep]))
    parts.append(_figure(spans.get("figure"), caption("fig_spans")))
    for k, files in spans.get("per_span", {}).items():
        parts.append(f"<h4>Span of {html.escape(str(k))} positions</h4>")
        skipped = None
        try:
            from causal_kl.io import read_provenance

            skipped = read_provenance(files["recon"]).get("skipped")
        except (OSError, ValueError, KeyError):
            skipped = None
        if skipped:
            parts.append(f"<p class='caption'>The route's own conditions are not computed for this span: "
                         f"{html.escape(str(skipped))}. The floors are.</p>")
        if Path(files.get("sites", "")).exists():
            rec = json.loads(Path(files["sites"]).read_text())
            parts.append(f"<p class='caption'>{rec.get('n_eligible')} of {rec.get('n_sites')} sites; "
                         f"{rec.get('n_excluded')} excluded (their span runs past the document's end).</p>")
        if Path(files["conditions"]).exists():
            cond = read_csv(files["conditions"])
            cols = ["label", "n"] + [c for c in cond.columns if c.startswith("kl0_")] + \
                   [c for c in cond.columns if c.startswith(f"loss_recovered_vs_{HEADLINE_FLOOR}")]
            parts.append(html_table(cond[[c for c in cols if c in cond.columns]]))
        parts.append(_figure(files.get("fig3"), caption("span_offsets")))
        if Path(files["offsets"]).exists():
            parts.append("<details><summary>offsets table (from the span's last position; negative: inside the span)"
                         "</summary>" + html_table(read_csv(files["offsets"])) + "</details>")
    return "\n".join(parts)


def route_section(route: str, files: Mapping[str, Any], reference: Mapping[str, Any] | None,
                  layer: int | str | None = None) -> str:
    """One route at one layer: headline cards, the four tables, statistics, three figures, SAELens' scores, spans."""
    rid = _anchor(route) if layer is None else _anchor(f"L{layer}", route)
    stats = json.loads(Path(files["stats"]).read_text())
    where = "" if layer is None else f" at layer {html.escape(str(layer))}"
    parts = [f"<h2 id='route-{rid}'>Route <code>{html.escape(route)}</code>{where}</h2>", _cards(stats)]
    wc = saelens_html(files)
    if wc:
        parts.append(f"<h3 id='saelens-{rid}'>SAELens-comparable scores (whole-context splice)</h3>")
        parts.append(wc)
    parts.append(f"<h3 id='conditions-{rid}'>Conditions (§2)</h3>")
    cond = read_csv(files["conditions"])
    loss_cols = [c for c in cond.columns if c.startswith("loss_recovered_vs_")]
    headline = [c for c in loss_cols if c.startswith(f"loss_recovered_vs_{HEADLINE_FLOOR}")]
    kl_cols = [c for c in cond.columns if c.startswith("kl0_")]
    rest = [c for c in cond.columns if c not in kl_cols + loss_cols + ["condition", "label", "n"]]
    parts.append(html_table(cond[["label", "n"] + kl_cols]))
    parts.append(html_table(cond[["label"] + rest + headline]))
    parts.append("<p class='caption'>Loss recovered against every floor F, 1 − mean ΔCE@0 / mean ΔCE@0(F):</p>")
    parts.append(html_table(cond[["label"] + [c for c in loss_cols if not c.endswith("_published")
                                                and not c.endswith("_diff")]]))
    parts.append(f"<div class='caption'>{html.escape(caption('conditions'))}</div>")
    parts.append(f"<h3 id='geometry-{rid}'>Geometric error vs causal damage (§3)</h3>")
    parts.append(_figure(files.get("fig1"), caption("fig1")))
    parts.append(f"<h3 id='quartiles-{rid}'>Quartiles of geometric error (§4)</h3>")
    parts.append(html_table(read_csv(files["quartiles"])))
    parts.append(f"<div class='caption'>{html.escape(caption('quartiles'))}</div>")
    parts.append(f"<h3 id='energy-{rid}'>Damage per unit energy (§4)</h3>")
    parts.append(_figure(files.get("fig2"), caption("fig2")))
    parts.append(f"<h3 id='offsets-{rid}'>KL by offset (§5)</h3>")
    parts.append(_figure(files.get("fig3"), caption("fig3")))
    parts.append("<details><summary>offsets table: median KL per condition at each offset</summary>"
                 + html_table(read_csv(files["offsets"])) + "</details>")
    parts.append(f"<div class='caption'>{html.escape(caption('offsets'))}</div>")
    parts.append(f"<h3 id='token_classes-{rid}'>Token classes</h3>")
    parts.append(html_table(read_csv(files["token_classes"]), drop=("member",)))
    parts.append(f"<div class='caption'>{html.escape(caption('token_classes'))}</div>")
    parts.append(f"<h3 id='statistics-{rid}'>Statistics</h3>")
    st = stats_table({k: v for k, v in stats.items() if k != "route"},
                     (reference or {}).get("stats") if reference is not None else None)
    parts.append(html_table(key_statistics(stats)))
    parts.append(f"<details><summary>every statistic of the route ({len(st)} values, as in stats/{html.escape(str(stats.get('route', '')))}.json)</summary>"
                 + html_table(st) + "</details>")
    parts.append(f"<div class='caption'>{html.escape(caption('stats'))}</div>")
    if files.get("spans"):
        parts.append(spans_html(route, files["spans"], rid))
    return "\n".join(parts)


def key_statistics(stats: dict) -> pd.DataFrame:
    """The statistics a reader looks for first, one row each, from a route's stats JSON."""
    def g(*keys):
        cur = stats
        for k in keys:
            if not isinstance(cur, dict) or k not in cur:
                return None
            cur = cur[k]
        return cur

    def num(v, fmt="{:.3g}"):
        return "–" if v is None else fmt.format(v)

    def ci(d, fmt="{:.3g}"):
        if not isinstance(d, dict):
            return "–"
        return f"{num(d.get('value', d.get('median_ratio')), fmt)} [{num(d.get('lo', d.get('median_ratio_lo')), fmt)}, {num(d.get('hi', d.get('median_ratio_hi')), fmt)}]"

    rows = []
    for label, key in (("Spearman ρ: direction-MSE vs KL@0", "dmse_vs_kl0"), ("Spearman ρ: clean CE@0 vs KL@0", "clean_ce_vs_kl0")):
        c = g("correlation", key) or {}
        rows.append((label, f"{num(c.get('rho'))} (p = {num(c.get('p'), '{:.2g}')}, n = {c.get('n', '–')})"))
    pr = g("paired", RECON) or {}
    rows.append(("recon / matched-noise KL@0, median per-site ratio [95% CI]", ci(pr)))
    rows.append(("share of sites where recon is worse than noise", num(pr.get("share_a_worse"), "{:.1%}")))
    rows.append(("Wilcoxon signed-rank p (recon vs noise)", num(pr.get("wilcoxon_p"), "{:.2g}")))
    for cond, label in ((RECON, "recon"), *((r, LABELS[r]) for r in RESAMPLES)):
        rows.append((f"damage per unit energy, {label} (noise = 1) [95% CI]", ci(g("energy", "normalised", cond))))
    for anchor, label in ((SAME_DOC, "same-doc"), (CROSS_DOC, "cross-doc")):
        a_ci = g("energy", "alpha_ci", anchor, RECON) or {}
        value = num(g("energy", "alpha", anchor, RECON), "{:.1%}")
        if a_ci and not a_ci.get("defined", True):
            value = f"undefined (anchor not above noise beyond its CI; value {value})"
        elif a_ci:
            value += f" [{num(a_ci.get('lo'), '{:.1%}')}, {num(a_ci.get('hi'), '{:.1%}')}]"
        rows.append((f"mixture share α, {label} anchor [95% CI]", value))
    first = g("floor_offsets", "first_offset_at_floor") or {}
    if first:
        rows.append(("first offset at the gold floor", ", ".join(f"{k} {v}" for k, v in first.items())))
    return pd.DataFrame(rows, columns=["statistic", "value"])


def _load_json(path: str | Path, missing: dict) -> dict:
    return json.loads(Path(path).read_text()) if path and Path(path).exists() else missing


def _comparison_html(comparison: Mapping[str, str], aid: str) -> list[str]:
    body = []
    if comparison.get("routes") and Path(comparison["routes"]).exists():
        body.append(html_table(read_csv(comparison["routes"])))
        body.append(f"<div class='caption'>{html.escape(caption('routes'))}</div>")
    if comparison.get("fig_routes"):
        body.append(_figure(comparison.get("fig_routes"), caption("fig_routes")))
    for key in ("fig1", "fig2", "fig3"):
        if comparison.get(key):
            body.append(_figure(comparison[key], caption(key) + " All routes of the layer."))
    return body


def build_report(
    run_json: str | Path,
    manifest: Mapping[str, Any],
    out: str | Path,
    reference: bool = False,
    reference_dir: str | Path | None = None,
) -> str:
    """Write ``out`` (one self-contained HTML file) and return its text.

    ``manifest["layers"][layer]`` maps ``gate`` (JSON), ``routes[route]`` (``conditions, quartiles,
    offsets, token_classes`` CSV, ``stats`` JSON, ``fig1, fig2, fig3`` PNG, and optionally
    ``whole_context`` / ``sae`` JSON and ``spans``) and ``comparison`` (``routes`` CSV, ``fig1, fig2,
    fig3, fig_routes`` PNG); ``manifest["across"]`` the cross-layer ``table`` and ``figure`` of a sweep.
    ``reference`` adds the published numbers to the statistics tables (the CSV tables carry them
    already when the run was built with them).
    """
    run = json.loads(Path(run_json).read_text()) if Path(run_json).exists() else {}
    ref = load_reference(reference_dir or REFERENCE_DIR) if reference else None
    layers = manifest.get("layers", {})
    many = len(layers) > 1
    gates = {l: _load_json(spec.get("gate"), {"checks": [], "pass": False, "line": "gate result missing"})
             for l, spec in layers.items()}
    n_sites = None
    for spec in layers.values():
        for files in spec.get("routes", {}).values():
            try:
                n_sites = int(json.loads(Path(files["stats"]).read_text())["headline"]["n_sites"])
            except (KeyError, OSError, ValueError):
                pass
            break
        break
    names = sorted({r for spec in layers.values() for r in spec.get("routes", {})})
    nav = ["<a href='#gate'>floor gate</a>"]
    if manifest.get("across"):
        nav.append("<a href='#layers'>across layers</a>")
    for l, spec in layers.items():
        prefix = f"L{l} " if many else ""
        nav.append(f"<a href='#comparison-{_anchor(l)}'>{html.escape(prefix)}all routes</a>")
        nav += [f"<a href='#route-{_anchor(f'L{l}', r)}'>{html.escape(prefix + r)}</a>" for r in spec.get("routes", {})]
    body = [
        f"<h1>Causal KL report: run <code>{html.escape(str(run.get('run', '?')))}</code></h1>",
        f"<p class='sub'>{html.escape(caption('report'))}</p>",
    ]
    for i, (l, gate) in enumerate(gates.items()):
        box = gate_html(gate, f"layer {l}" if many else None)
        body.append(box if i == 0 else box.replace("id=\"gate\"", f"id=\"gate-{_anchor(l)}\""))
    body += ["<h2 id='provenance-h'>Provenance</h2>",
             provenance_html(run, n_sites, names, list(layers), manifest.get("spans")),
             "<nav>" + " ".join(nav) + "</nav>"]
    if reference:
        body.append("<p class='caption'>Published values of the reference write-up are shown beside the "
                    "measured ones (<span class='pub'>_published</span>) with the difference "
                    "(<span class='diff'>_diff</span> = measured − published).</p>")
    across = manifest.get("across") or {}
    if across:
        body.append("<h2 id='layers'>Across layers</h2>")
        body.append(_figure(across.get("figure"), caption("fig_layers")))
        if Path(across.get("table", "")).exists():
            body.append("<details><summary>the table: per route and floor and layer, median KL@0 and loss recovered "
                        "[95% CI], FVE</summary>" + html_table(read_csv(across["table"])) + "</details>")
        body.append(f"<div class='caption'>{html.escape(caption('layers'))}</div>")
    for l, spec in layers.items():
        title = f"Layer {html.escape(str(l))}: all routes" if many else "All routes"
        body.append(f"<h2 id='comparison-{_anchor(l)}'>{title}</h2>")
        body += _comparison_html(spec.get("comparison", {}), _anchor(l))
        for r, files in spec.get("routes", {}).items():
            body.append(route_section(r, files, ref, l))
    doc = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
           f"<title>causal-kl report: {html.escape(str(run.get('run', '')))}</title>"
           f"<style>{CSS_PATH.read_text()}</style></head><body>" + "\n".join(body) + "</body></html>\n")
    write_text(out, doc)
    return doc


__all__ = ["CAPTIONS_DIR", "build_report", "caption", "display_frame", "gate_html", "html_table"]
