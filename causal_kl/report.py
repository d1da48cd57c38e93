"""The HTML report of one run: a main page, and one page per route and layer.

The main page (``results/{run}/report.html``) holds what a reader compares: the floor gate of every
layer, provenance, the cross-layer table and figures, and per layer the routes table, the all-routes
figures and the sparsity–damage frontier, each route linked to its own page. A route's page
(``results/{run}/report/L{layer}/{route}.html``) holds its details: headline cards, the four tables,
statistics, its figures, SAELens' scores and SAE sparsity, spans; it links back to the main page's
layer section. So the main page grows with layers and routes by a table row and the comparison
figures, not by every route's figures, and adding a route writes one new route page without
touching the others.

Every page is self-contained: the style sheet is inline and each figure is embedded as a ``data:``
image, PNG or SVG, whichever is smaller for that figure; a page opens offline and its links are
relative, so ``report.html`` and the ``report/`` folder beside it can be copied together. A failed
floor gate is shown at the top in red; the report is still written. Captions come from
``reports/*.rst`` (the same files ``snakemake --report`` shows), with the reStructuredText markup
stripped.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping, Union

import numpy as np
import pandas as pd

from causal_kl import paths
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


FigureSpec = Union[str, Path, Mapping[str, Any], None]
"""A figure in a manifest: ``{"png": path, "svg": path}`` (either may be absent), or one path (PNG or SVG)."""

SVG_UNSAFE = re.compile(r'[%#"&<>`{}?\x00-\x1f\x7f-\U0010ffff]')
"""Characters an SVG is percent-encoded at inside a ``data:`` URL in a double-quoted attribute (the WHATWG path
percent-encode set, ``&`` and ``"`` for HTML, and everything outside ASCII; spaces and ``'`` are left as they are)."""


def _png_data(raw: bytes) -> tuple[str, str]:
    """A PNG's ``data:`` URL and its display width: 100 CSS px per inch of the figure (dpi from its pHYs chunk)."""
    width = int.from_bytes(raw[16:20], "big")
    i = raw.find(b"pHYs")
    dpi = int.from_bytes(raw[i + 4:i + 8], "big") * 0.0254 if i > 0 else 100.0
    return ("data:image/png;base64," + base64.b64encode(raw).decode("ascii"),
            f"{width * 100.0 / max(dpi, 1.0):.0f}px")


def quantize_png(raw: bytes, colors: int = 256) -> bytes:
    """A PNG with its colours reduced to a palette of ``colors`` (Pillow's fast octree, alpha kept) and its dpi kept.

    A plot has few colours but anti-aliased edges and translucent points blend them into many; a 256-colour
    palette draws the same picture at a third to a fifth of the bytes of matplotlib's RGBA PNG."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(raw)) as img:
        dpi = img.info.get("dpi")
        small = img.convert("RGBA").quantize(colors=colors, method=Image.Quantize.FASTOCTREE)
        out = io.BytesIO()
        small.save(out, format="PNG", compress_level=9, **({"dpi": dpi} if dpi else {}))
    return out.getvalue()


def minify_svg(text: str) -> str:
    """A matplotlib SVG without its XML prolog, doctype, metadata block and the whitespace between tags, its attributes
    in single quotes (which a ``data:`` URL inside a double-quoted HTML attribute need not escape).

    Matplotlib draws text as paths (``svg.fonttype: path``), so no element's text content is whitespace-sensitive.
    """
    text = re.sub(r"<\?xml[^>]*\?>|<!DOCTYPE[^>]*>|<metadata>.*?</metadata>", "", text, flags=re.S)
    text = re.sub(r"(\s[\w:.-]+)=\"([^\"'<]*)\"", r"\1='\2'", text)  # attributes in single quotes: nothing to escape
    return re.sub(r">\s+<", "><", text).strip()


def _svg_data(text: str) -> tuple[str, str]:
    """An SVG's ``data:`` URL (percent-encoded, not base64: a third smaller) and its display width (100 px/inch)."""
    text = minify_svg(text)
    m = re.search(r"<svg[^>]*?\swidth='([\d.]+)(pt|px)?'", text)
    width = ""
    if m:
        per_inch = 72.0 if m.group(2) in (None, "pt") else 96.0
        width = f"{float(m.group(1)) * 100.0 / per_inch:.0f}px"
    data = SVG_UNSAFE.sub(lambda c: "".join(f"%{b:02X}" for b in c.group(0).encode("utf-8")), text)
    return "data:image/svg+xml;charset=utf-8," + data, width


def figure_sources(fig: FigureSpec) -> dict[str, Path]:
    """The existing files of a figure, by format (``png``, ``svg``)."""
    if fig is None:
        return {}
    if isinstance(fig, Mapping):
        paths = {k: Path(v) for k, v in fig.items() if k in ("png", "svg") and v}
    else:
        p = Path(fig)
        paths = {"png": p.with_suffix(".png"), "svg": p.with_suffix(".svg")} if p.suffix == ".png" else \
            {p.suffix.lstrip("."): p}
    return {k: p for k, p in paths.items() if p.exists()}


def embed_figure(fig: FigureSpec) -> tuple[str, str, str] | None:
    """The smallest ``data:`` URL of a figure: its SVG, its PNG, or its PNG with a 256-colour palette
    (:func:`quantize_png`); ``(url, format, display width)``, format ``svg``, ``png`` or ``png8``; None when the figure
    has no file."""
    options = []
    for fmt, path in figure_sources(fig).items():
        if fmt == "svg":
            options.append((*_svg_data(path.read_text()), "svg"))
            continue
        raw = path.read_bytes()
        options.append((*_png_data(raw), "png"))
        options.append((*_png_data(quantize_png(raw)), "png8"))
    if not options:
        return None
    url, width, fmt = min(options, key=lambda o: len(o[0]))
    return url, fmt, width


def _img(fig: FigureSpec) -> str:
    """A figure as an ``<img>`` with its smaller ``data:`` URL, shown at 100 CSS px per inch of the figure."""
    url, _, width = embed_figure(fig)
    name = next(iter(figure_sources(fig).values())).stem
    style = f' style="width:{width}"' if width else ""
    return f'<img alt="{html.escape(name)}"{style} src="{url}">'


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
        if col in ("l0", "sae_l0"):
            return f"{v:.1f}"
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


def html_table(df: pd.DataFrame, drop: tuple[str, ...] = (), links: Mapping[str, str] | None = None,
               link_column: str = "route", row_ids: Mapping[str, str] | None = None) -> str:
    """A DataFrame as an HTML table; published/diff columns tinted, CI columns folded.

    ``links`` maps values of ``link_column`` to an href (the cell becomes a link); ``row_ids`` maps them to the
    ``id`` of their row (an anchor other pages link to).
    """
    df = df[[c for c in df.columns if c not in drop]]
    disp = display_frame(df)
    head = []
    for c in disp.columns:
        cls = "pub" if c.endswith("_published") else "diff" if c.endswith("_diff") else ""
        txt = " txt" if _is_text(df[c]) else ""
        head.append(f'<th class="{cls}{txt}">{html.escape(c).replace("_", "_<wbr>")}</th>')
    body = []
    keys = df[link_column].astype(str).tolist() if link_column in df and (links or row_ids) else [None] * len(df)
    for key, (_, row) in zip(keys, disp.iterrows()):
        cells = []
        for c in disp.columns:
            cls = "pub" if c.endswith("_published") else "diff" if c.endswith("_diff") else ""
            txt = " txt" if _is_text(df[c]) else ""
            value = row[c]
            if links and c == link_column and key in links:
                value = f"<a href='{html.escape(links[key])}'>{value}</a>"
            cells.append(f'<td class="{cls}{txt}">{value}</td>')
        rid = f" id='{html.escape(row_ids[key])}'" if row_ids and key in row_ids else ""
        body.append(f"<tr{rid}>" + "".join(cells) + "</tr>")
    return "<table><thead><tr>" + "".join(head) + "</tr></thead><tbody>" + "".join(body) + "</tbody></table>"


def gate_bound(check: Mapping[str, Any]) -> str:
    """A gate row's bound as a reader wants it: ``> 0.999`` (re-extract cos), ``≤ 0.01`` (gold-repatch KL, nats),
    ``0.7749 ± 0.001`` (an FVE re-check: the stated expectation and its tolerance), ``–`` when there is none (an FVE
    row of a route that states no expected FVE)."""
    bound = check.get("bound")
    if bound is None:
        return "–"
    name = check.get("name")
    if name == "fve_recheck" and isinstance(bound, (list, tuple)) and len(bound) == 2:
        return f"{float(bound[0]):.4f} ± {float(bound[1]):g}"
    if name == "reextract":
        return f"> {float(bound):g}"
    if name == "gold_repatch":
        return f"≤ {float(bound):g} nats"
    return str(bound)


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
                    f"<td>{_fmt(c.get('value'))}</td><td class='txt'>{html.escape(gate_bound(c))}</td>"
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


def _point_text(point: Any) -> str:
    """A layer as itself, a point inside a block as ``3 (mlp_out)``."""
    layer, _, hook = str(point).partition(".")
    return f"{layer} ({hook})" if hook else layer


def provenance_html(run: Mapping[str, Any], n_sites: int | None, routes: list[str], layers: list | None = None,
                    spans: list | None = None) -> str:
    cfg = run.get("config", {}) or {}
    corpus = cfg.get("corpus", {}) or {}
    layers = layers if layers is not None else run.get("layers") or [run.get("layer")]
    items = [
        ("run", run.get("run")), ("model", run.get("model")),
        ("layers" if len(layers) > 1 else "layer", ", ".join(_point_text(l) for l in layers)),
        ("spans", ", ".join(str(k) for k in (spans or run.get("spans") or [1]))),
        ("corpus", f"{corpus.get('name', '?')} · {corpus.get('split', '?')} · rows {corpus.get('rows', '?')}"),
        ("sites", n_sites), ("seed", cfg.get("seed")), ("routes", ", ".join(routes) or "none"),
        ("config hash", run.get("config_hash")), ("code version", run.get("code_version")),
        ("production configuration", run.get("production")),
    ]
    rows = "".join(f"<tr><td class='txt'>{html.escape(k)}</td><td class='txt'>{_fmt(v)}</td></tr>" for k, v in items)
    return f"<table id='provenance'><tbody>{rows}</tbody></table>"


def _figure(fig: FigureSpec, cap: str) -> str:
    if not figure_sources(fig):
        return f"<p class='caption'>(figure missing: {html.escape(str(fig))})</p>"
    return f"<figure>{_img(fig)}<figcaption>{html.escape(cap)}</figcaption></figure>"


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


def point_label(point: Any) -> str:
    """A point as a section names it: ``layer 3`` (the block's output, resid_post), ``layer 3, mlp_out``."""
    layer, _, hook = str(point).partition(".")
    return f"layer {layer}, {hook}" if hook else f"layer {layer}"


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
                             ("architecture", sp.get("architecture")),
                             ("hook", sp.get("hook_name") if not sp.get("hook_name_out")
                              else f"reads {sp.get('hook_name')}, writes {sp.get('hook_name_out')}"),
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
    """One route at one layer, the body of its page: headline cards, SAELens' scores and SAE sparsity, the four tables,
    statistics, three figures, spans. Section anchors: ``{section}-L{layer}-{route}``."""
    rid = _anchor(route) if layer is None else _anchor(f"L{layer}", route)
    stats = json.loads(Path(files["stats"]).read_text())
    parts = [f"<div id='route-{rid}'>{_cards(stats)}</div>"]
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


def route_page_path(main: str | Path, layer: int | str, route: str) -> Path:
    """Where the page of ``route`` at ``layer`` lives, for the main page ``main`` (``results/{run}/report.html``):
    ``paths.TEMPLATES["route_page"]`` in the main page's run folder."""
    run_dir = Path(main).parents[len(Path(paths.TEMPLATES["report"]).parts) - 1]
    return run_dir / paths.fill(paths.TEMPLATES["route_page"], layer=layer, route=route)


def _relative(target: str | Path, page: str | Path) -> str:
    """``target`` as a link from the page ``page`` (both paths from the same root; always with forward slashes)."""
    return Path(os.path.relpath(Path(target), Path(page).parent)).as_posix()


def _document(title: str, body: list[str]) -> str:
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{CSS_PATH.read_text()}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")


def _comparison_html(comparison: Mapping[str, Any], layer: str, pages: Mapping[str, str],
                     frontier: Mapping[str, Any] | None, heading: str) -> list[str]:
    """A layer's all-routes section: the routes table (each route linked to its page), the routes comparison, the
    sparsity–damage frontier, then the write-up's figures with a panel per route."""
    body = []
    if comparison.get("routes") and Path(comparison["routes"]).exists():
        table = read_csv(comparison["routes"])
        body.append(html_table(table, links=pages, row_ids={r: f"route-{_anchor(f'L{layer}', r)}" for r in pages}))
        body.append(f"<div class='caption'>{html.escape(caption('routes'))} Each route's name opens its own page "
                    "(tables, statistics, figures, SAELens' scores, spans).</div>")
    if comparison.get("fig_routes"):
        body.append(_figure(comparison.get("fig_routes"), caption("fig_routes")))
    if frontier:
        body += frontier_html(frontier, _anchor(layer), heading, links=pages)
    for key in ("fig1", "fig2", "fig3"):
        if comparison.get(key):
            body.append(_figure(comparison[key], caption(key) + " All routes of the layer."))
    return body


FRONTIER_AXES = {"l0": "L0", "fve": "FVE"}
FRONTIER_DAMAGE = {"kl0": "KL@0", "loss": "loss recovered", "saelens": "SAELens kl_div_score"}
FRONTIER_SHOWN = ("layer", "route", "kind", "l0", "fve", "kl0_median", "kl0_median_lo", "kl0_median_hi",
                  "loss_recovered", "loss_recovered_lo", "loss_recovered_hi", "saelens_kl_div_score")


def frontier_display(frontier: pd.DataFrame, with_layer: bool = False) -> pd.DataFrame:
    """The frontier table as the report shows it: the values with CIs, and one column naming the (sparsity, damage)
    pairs whose frontier the route is on."""
    cols = [c for c in FRONTIER_SHOWN if c in frontier and (with_layer or c != "layer")]
    out = frontier[cols].copy()
    on = []
    for _, row in frontier.iterrows():
        names = [f"{FRONTIER_AXES[a]}–{FRONTIER_DAMAGE[d]}" for a in FRONTIER_AXES for d in FRONTIER_DAMAGE
                 if bool(row.get(f"frontier_{a}_{d}", False))]
        on.append(", ".join(names) or "–")
    out["on_the_frontier_of"] = on
    return out


def frontier_html(frontier: Mapping[str, Any], aid: str, heading: str, with_layer: bool = False,
                  links: Mapping[str, str] | None = None) -> list[str]:
    """The sparsity–damage frontier: its table (a layer's open, every layer's folded), then its figure."""
    body = [f"<h3 id='frontier-{aid}'>{html.escape(heading)}</h3>"]
    if frontier.get("table") and Path(frontier["table"]).exists():
        table = html_table(frontier_display(read_csv(frontier["table"]), with_layer), links=links)
        if with_layer:
            table = ("<details><summary>the table: per layer and route, L0, FVE, median KL@0 and loss recovered vs "
                     "cross-doc resample [95% CI], SAELens' kl_div_score, and the frontiers the route is on</summary>"
                     + table + "</details>")
        body.append(table)
    body.append(_figure(frontier.get("figure"), caption("frontier")))
    return body


def build_route_page(
    files: Mapping[str, Any],
    out: str | Path,
    run: str,
    layer: int | str,
    route: str,
    main: str | Path,
    route_config: Mapping[str, Any] | None = None,
    reference: bool = False,
    reference_dir: str | Path | None = None,
) -> str:
    """Write the page of one route at one layer (``out``, self-contained) and return its text.

    ``files`` is the route's manifest (``conditions, quartiles, offsets, token_classes`` CSV, ``stats`` JSON, ``fig1,
    fig2, fig3`` figures, optionally ``whole_context`` / ``sae`` JSON and ``spans``); ``main`` the run's main page,
    which the page links back to (its layer section and the gate). The page reads nothing of other routes or of the
    gate, so adding a route or a layer leaves it as it is.
    """
    ref = load_reference(reference_dir or REFERENCE_DIR) if reference else None
    rid = _anchor(f"L{layer}", route)
    back = _relative(main, out)
    stats = _load_json(files.get("stats"), {})
    n_sites = (stats.get("headline") or {}).get("n_sites")
    settings = ", ".join(f"{k}: {v}" for k, v in sorted((route_config or {}).items()))
    block, _, hook = str(layer).partition(".")
    items = [("run", run), ("layer", block), *([("hook", hook)] if hook else []), ("route", route), ("route settings", settings or None), ("sites", n_sites)]
    sections = [("conditions", "conditions"), ("geometry", "geometry vs damage"), ("quartiles", "quartiles"),
                ("energy", "damage per energy"), ("offsets", "KL by offset"), ("token_classes", "token classes"),
                ("statistics", "statistics")]
    if files.get("whole_context") or files.get("sae"):
        sections.insert(0, ("saelens", "SAELens-comparable scores"))
    if files.get("spans"):
        sections.append(("spans", "spans"))
    nav = [f"<a href='{back}#comparison-{_anchor(layer)}'>← all routes of {html.escape(point_label(layer))}</a>",
           f"<a href='{back}#gate'>floor gate</a>"] + [f"<a href='#{s}-{rid}'>{html.escape(t)}</a>" for s, t in sections]
    body = [
        f"<h1>Route <code>{html.escape(route)}</code> at {html.escape(point_label(layer))}: run "
        f"<code>{html.escape(str(run))}</code></h1>",
        f"<p class='sub'>One route's details. The floor gate, provenance and the comparison with the run's other "
        f"routes are on the <a href='{back}#route-{rid}'>main page</a>.</p>",
        "<nav>" + " ".join(nav) + "</nav>",
        "<table id='provenance'><tbody>" + "".join(f"<tr><td class='txt'>{html.escape(k)}</td><td class='txt'>"
                                                  f"{_fmt(v)}</td></tr>" for k, v in items) + "</tbody></table>",
        route_section(route, files, ref, layer),
        f"<nav><a href='{back}#comparison-{_anchor(layer)}'>← all routes of {html.escape(point_label(layer))}</a></nav>",
    ]
    doc = _document(f"causal-kl report: {run}, {point_label(layer)}, {route}", body)
    write_text(out, doc)
    return doc


def _n_sites(layers: Mapping[str, Any]) -> int | None:
    """The run's site count, from the first routes table (its ``n``: sites with a reconstruction at offset 0)."""
    for spec in layers.values():
        path = (spec.get("comparison") or {}).get("routes")
        if path and Path(path).exists():
            n = read_csv(path).get("n")
            if n is not None and len(n):
                return int(n.max())
    return None


def build_report(
    run_json: str | Path,
    manifest: Mapping[str, Any],
    out: str | Path,
    reference: bool = False,
    reference_dir: str | Path | None = None,
) -> str:
    """Write the main page ``out`` (self-contained) and return its text.

    ``manifest["layers"][layer]`` maps ``gate`` (JSON), ``routes`` (route -> its page, as
    :func:`route_page_path` names it), ``comparison`` (``routes`` CSV, ``fig1, fig2, fig3,
    fig_routes`` figures) and ``frontier`` (``table`` CSV, ``figure``); ``manifest["across"]`` the
    cross-layer ``table`` and ``figure`` of a sweep and its ``frontier`` (``table``, ``figure``). The
    main page reads no route page: it links to them. ``reference`` adds a note on the published
    columns the CSV tables carry when the run was built with them.
    """
    run = json.loads(Path(run_json).read_text()) if Path(run_json).exists() else {}
    layers = manifest.get("layers", {})
    many = len(layers) > 1
    gates = {l: _load_json(spec.get("gate"), {"checks": [], "pass": False, "line": "gate result missing"})
             for l, spec in layers.items()}
    names = sorted({r for spec in layers.values() for r in spec.get("routes", {})})
    across = manifest.get("across") or {}
    nav = ["<a href='#gate'>floor gate</a>"]
    if across:
        nav.append("<a href='#layers'>across layers</a>")
        if across.get("frontier"):
            nav.append("<a href='#frontier-layers'>frontier across layers</a>")
    for l, spec in layers.items():
        prefix = f"{point_label(l)}: " if many else ""
        nav.append(f"<a href='#comparison-{_anchor(l)}'>{html.escape(prefix)}all routes</a>")
        if spec.get("frontier"):
            nav.append(f"<a href='#frontier-{_anchor(l)}'>{html.escape(prefix)}frontier</a>")
    body = [
        f"<h1>Causal KL report: run <code>{html.escape(str(run.get('run', '?')))}</code></h1>",
        f"<p class='sub'>{html.escape(caption('report'))} Each route's details are on its own page, linked from "
        "its layer's routes table.</p>",
    ]
    for i, (l, gate) in enumerate(gates.items()):
        box = gate_html(gate, point_label(l) if many else None)
        body.append(box if i == 0 else box.replace("id=\"gate\"", f"id=\"gate-{_anchor(l)}\""))
    body += ["<h2 id='provenance-h'>Provenance</h2>",
             provenance_html(run, _n_sites(layers), names, list(layers), manifest.get("spans")),
             "<nav>" + " ".join(nav) + "</nav>"]
    if reference:
        body.append("<p class='caption'>Published values of the reference write-up are shown beside the "
                    "measured ones (<span class='pub'>_published</span>) with the difference "
                    "(<span class='diff'>_diff</span> = measured − published), here and on every route's page.</p>")
    if across:
        body.append("<h2 id='layers'>Across layers</h2>")
        body.append(_figure(across.get("figure"), caption("fig_layers")))
        if Path(across.get("table", "")).exists():
            body.append("<details><summary>the table: per route and floor and layer, median KL@0 and loss recovered "
                        "[95% CI], FVE</summary>" + html_table(read_csv(across["table"])) + "</details>")
        body.append(f"<div class='caption'>{html.escape(caption('layers'))}</div>")
        if across.get("frontier"):
            body += frontier_html(across["frontier"], "layers", "Sparsity–damage frontier, every layer",
                                  with_layer=True)
    for l, spec in layers.items():
        title = f"{html.escape(point_label(l)).capitalize()}: all routes" if many else "All routes"
        body.append(f"<h2 id='comparison-{_anchor(l)}'>{title}</h2>")
        pages = {r: _relative(page, out) for r, page in spec.get("routes", {}).items()}
        if pages:
            body.append("<p class='caption'>Route pages: " + " · ".join(
                f"<a href='{html.escape(href)}'>{html.escape(r)}</a>" for r, href in pages.items()) + "</p>")
        body += _comparison_html(spec.get("comparison", {}), l, pages, spec.get("frontier"),
                                 f"Sparsity–damage frontier{f' at {point_label(l)}' if many else ''}")
    doc = _document(f"causal-kl report: {run.get('run', '')}", body)
    write_text(out, doc)
    return doc


__all__ = ["CAPTIONS_DIR", "build_report", "build_route_page", "caption", "display_frame", "embed_figure", "gate_bound",
           "gate_html", "html_table", "point_label", "route_page_path"]
