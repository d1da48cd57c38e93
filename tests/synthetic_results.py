"""A tiny synthetic ``results/{run}/`` tree (every upstream file the analysis reads), for tests.

Numbers are random but shaped like the real thing: route KLs small, resample KLs large,
KL decaying with offset, some sites without a same-document sibling, some offsets past the
end of a document missing. Written through the package's own contracts and atomic IO.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from causal_kl.contracts import CONDITION_CHOICES, EVAL_MEAN, GEOMETRY, GOLD, PATCH, SITES
from causal_kl.io import write_json, write_parquet

TOKENS = (" the", " model", " 42", "7", " 1000", "x", ".", " 3 ")
"""Token texts of the synthetic sites (some digits-only, some with spaces), chosen per site."""

FLOOR_SCALE = {"gold": 1e-4, "resample_same_doc": 10.0, "resample_cross_doc": 12.0, "zero": 6.0, "mean": 5.0}
ROUTE_SCALE = {"recon_goldnorm": 0.06, "recon_rawnorm": 0.08, "noise_matched": 0.025}


LAYER = 3
"""The synthetic run's one layer: its outputs lie under ``results/{run}/L3/``."""


def make_results(root: Path, run: str = "syn", routes: tuple[str, ...] = ("toy",), n_docs: int = 6,
                 per_doc: int = 8, d: int = 16, seed: int = 0, gate_ok: bool = True, layer: int = LAYER) -> Path:
    """Write the synthetic run under ``root/results/{run}`` (its layer's files under ``L{layer}/``, L3 by default);
    return the layer's directory (the run's own files, ``sites.parquet`` and ``run.json``, are in its parent)."""
    rng = np.random.default_rng(seed)
    R = Path(root) / "results" / run / f"L{layer}"
    n = n_docs * per_doc
    site_ids = np.arange(n, dtype=np.int64)
    docs = np.repeat(np.arange(n_docs), per_doc)
    # the last document has one site only (no same-doc sibling); drop the rest of its sites
    keep = ~((docs == n_docs - 1) & (np.arange(n) % per_doc > 0))
    site_ids, docs = site_ids[keep], docs[keep]
    n = len(site_ids)
    positions = 50 + (np.arange(n) % per_doc) * 20
    token_ids = rng.integers(0, len(TOKENS), size=n)
    write_parquet(R.parent / "sites.parquet", {
        "site_id": site_ids, "doc_id": [f"syn:train:{k}" for k in docs], "position": positions,
        "token_id": token_ids, "token": [TOKENS[t] for t in token_ids], "next_token_id": rng.integers(4, 200, size=n),
        "shard": site_ids // 100,
    }, SITES)
    gold = rng.normal(size=(n, d)).astype(np.float32) + 0.5
    write_parquet(R / "gold.parquet", {"site_id": site_ids, "layer": np.full(n, layer), "activation": gold}, GOLD, d=d)
    write_parquet(R / "stored_gold.parquet", {"site_id": site_ids, "layer": np.full(n, layer), "activation": gold}, GOLD,
                  d=d)
    same = np.full(n, -1, dtype=np.int64)
    cross = np.zeros(n, dtype=np.int64)
    for i in range(n):
        sib = site_ids[(docs == docs[i]) & (site_ids != site_ids[i])]
        if len(sib):
            same[i] = rng.choice(sib)
        cross[i] = rng.choice(site_ids[docs != docs[i]])
    write_parquet(R / "conditions" / "choices.parquet",
                  {"site_id": site_ids, "same_doc_source": same, "cross_doc_source": cross}, CONDITION_CHOICES)
    write_parquet(R / "conditions" / "mean.parquet", {"mean": gold.mean(axis=0, keepdims=True), "n": [n]}, EVAL_MEAN, d=d)

    rows = []
    clean_ce = rng.gamma(2.0, 1.5, size=n)
    for i, s in enumerate(site_ids):
        n_off = 32 if i % 7 else 20  # some documents end before offset 31
        for k in range(n_off):
            decay = 1.0 if k == 0 else 1e-3 * 0.5 ** k
            rows.append((s, "", "clean", k, 0.0, clean_ce[i], 0.0))
            for c, scale in FLOOR_SCALE.items():
                if c == "resample_same_doc" and same[i] < 0:
                    continue
                kl = scale * decay * rng.lognormal(0, 0.5)
                rows.append((s, "", c, k, kl, clean_ce[i] + kl * 0.9, kl * 0.9 * rng.normal(1, 0.1)))
    for r_i, route in enumerate(routes):
        for i, s in enumerate(site_ids):
            n_off = 32 if i % 7 else 20
            for k in range(n_off):
                decay = 1.0 if k == 0 else 1e-3 * 0.5 ** k
                for c, scale in ROUTE_SCALE.items():
                    kl = scale * (1 + r_i) * decay * rng.lognormal(0, 0.8) * (1 + 0.3 * clean_ce[i])
                    rows.append((s, route, c, k, kl, clean_ce[i] + kl * 0.5, kl * 0.5 * rng.normal(1, 0.3)))
    cols = ["site_id", "route", "condition", "offset", "kl", "ce", "delta_ce"]
    patch = pd.DataFrame(rows, columns=cols)
    patch["span"] = 1
    # as the pipeline writes them: the floors, each route's rows, and all of them in one file
    for name, part in [("floors", patch[patch["route"] == ""])] + [(r, patch[patch["route"] == r]) for r in routes]:
        write_parquet(R / "span1" / "patch" / f"{name}.parquet", {c: part[c].to_numpy() for c in PATCH.names}, PATCH)
    write_parquet(R / "patch.parquet", {c: patch[c].to_numpy() for c in PATCH.names}, PATCH)

    for r_i, route in enumerate(routes):
        recon = gold + rng.normal(scale=0.3 + 0.2 * r_i, size=gold.shape)
        g, r = gold.astype(np.float64), recon.astype(np.float64)
        gn, rn = np.linalg.norm(g, axis=1), np.linalg.norm(r, axis=1)
        cos = (g * r).sum(1) / gn / rn
        rg = r / rn[:, None] * gn[:, None]
        write_parquet(R / "geometry" / f"{route}.parquet", {
            "site_id": site_ids, "cos": cos, "direction_mse": 2 * (1 - cos), "gold_norm": gn,
            "recon_norm": rn, "noise_norm": np.linalg.norm(rg - g, axis=1)}, GEOMETRY)
        write_json(R / "geometry" / f"{route}.json", {"route": route, "variance": 0.6, "fve": float(1 - np.mean(2 * (1 - cos)) / 0.6),
                                                     "n": n, "recheck": None})
    write_json(R / "reextract.json", {"min_cos": 0.99995 if gate_ok else 0.9, "threshold": 0.999,
                                      "passed": gate_ok, "n": n})
    write_json(R.parent / "run.json", {"run": run, "config": {"seed": 42, "corpus": {"name": "syn", "split": "train",
                                                                             "rows": [0, n_docs]}},
                                "config_hash": "abc123", "model": "tiny", "layer": layer, "layers": [layer],
                                "code_version": "test", "production": False})
    return R


if __name__ == "__main__":  # pragma: no cover
    import sys

    print(make_results(Path(sys.argv[1])))
    print(json.dumps({"ok": True}))


def build_outputs(R: Path, routes: tuple[str, ...] = ("toy",), reference: bool = False, n_boot: int = 50,
                  expected_fve: dict | None = None, route_figures: bool = True, pages: bool = True,
                  sae: Mapping[str, float] | None = None, whole_context: Mapping[str, float] | None = None,
                  dpi: int = 80) -> dict:
    """Run every analysis job (no Snakemake) on a synthetic run's layer ``R``; return the main page's manifest.

    ``sae``: route -> the L0 its (synthetic) ``sae/{route}.json`` states; ``whole_context``: route -> the
    ``kl_div_score`` its ``whole_context/{route}.json`` states (routes not named have neither, as a non-SAE route).
    ``route_figures``/``pages``: also draw each route's figures / write each route's page (``report/L{layer}/``
    beside the run's ``report.html``); ``dpi``: the figures' (80, for speed; the workflow's default is 150). The
    manifest's ``route_files[layer][route]`` is each route's own manifest.
    """
    from causal_kl.jobs import figures, report, statistics, tables
    from causal_kl.reference import REFERENCE_DIR
    from causal_kl.report import route_page_path

    R = Path(R)
    s = lambda p: str(p)  # noqa: E731
    L = R.name[1:]
    prov = {"config_hash": "abc123", "run": R.parent.name, "model": "tiny", "layer": int(L), "rule": "test"}
    boot = {"n_boot": n_boot, "seed": 0, "ci": 0.95}
    ref = (lambda name: [s(REFERENCE_DIR / f"{name}.csv")]) if reference else (lambda name: [])
    main = R.parent / "report.html"
    tables.error_norms(gold=s(R / "stored_gold.parquet"), choices=s(R / "conditions/choices.parquet"),
                       mean=s(R / "conditions/mean.parquet"), norms=s(R / "analysis/error_norms.parquet"), layer=L,
                       provenance=prov)
    files: dict = {}
    for r in routes:
        ps = s(R / f"analysis/{r}/per_site.parquet")
        geo_json = s(R / f"geometry/{r}.json")
        tables.per_site(floors=s(R / "span1/patch/floors.parquet"), patch=s(R / f"span1/patch/{r}.parquet"), geometry=s(R / f"geometry/{r}.parquet"),
                        error_norms=s(R / "analysis/error_norms.parquet"), sites=s(R.parent / "sites.parquet"), table=ps,
                        layer=L, route=r, provenance=prov)
        t = {k: s(R / f"tables/{r}/{k}.csv") for k in ("conditions", "quartiles", "offsets", "token_classes")}
        tables.table_conditions(per_site=ps, reference=ref("conditions"), table=t["conditions"], layer=L, route=r, **boot)
        tables.table_quartiles(per_site=ps, geometry_json=geo_json, gold=s(R / "stored_gold.parquet"),
                               reference=ref("quartiles"), table=t["quartiles"], layer=L, route=r, **boot)
        tables.table_offsets(floors=s(R / "span1/patch/floors.parquet"), patch=s(R / f"span1/patch/{r}.parquet"),
                             reference=ref("offsets"), table=t["offsets"], layer=L, route=r)
        tables.table_token_classes(per_site=ps, geometry_json=geo_json, reference=ref("token_classes"),
                                   table=t["token_classes"], classes={"space": r"^\s"}, layer=L, route=r)
        parts = {k: s(R / f"stats/{r}/{k}.json") for k in ("correlation", "paired", "energy", "floor_offsets")}
        statistics.stat_correlation(per_site=ps, record=parts["correlation"], layer=L, route=r)
        statistics.stat_paired(per_site=ps, record=parts["paired"], layer=L, route=r, **boot)
        statistics.stat_energy(per_site=ps, record=parts["energy"], layer=L, route=r, **boot)
        statistics.stat_floor_offsets(offsets=t["offsets"], record=parts["floor_offsets"], tolerance=2.0, min_kl=1e-4,
                                      layer=L, route=r)
        statistics.stats_route(**parts, conditions=t["conditions"], geometry_json=geo_json,
                               record=s(R / f"stats/{r}.json"), layer=L, route=r)
        figs = {key: R / f"figures/{r}/{name}" for key, name in FIGURES.items()}
        out = {key: {"png": s(f"{v}.png"), "svg": s(f"{v}.svg"), "dpi": dpi, "layer": L, "route": r}
               for key, v in figs.items()}
        if route_figures:
            figures.fig1_route(per_site=ps, correlation=parts["correlation"], style={}, **out["fig1"])
            figures.fig2_route(energy=parts["energy"], style={}, **out["fig2"])
            figures.fig3_route(offsets=t["offsets"], style={}, **out["fig3"])
        files[r] = {**t, "stats": s(R / f"stats/{r}.json"), **{k: {"png": v["png"], "svg": v["svg"]} for k, v in out.items()}}
        if sae and r in sae:
            files[r]["sae"] = s(R / f"sae/{r}.json")
            write_json(files[r]["sae"], {"route": r, "layer": int(L), "sae_path": f"sae/L{L}/{r}", "l0": float(sae[r]),
                                         "d_sae": 320, "n_dead": 3, "dead_share": 3 / 320, "explained_variance": 0.9,
                                         "architecture": "topk", "hook_name": f"blocks.{L}.hook_resid_post"})
        if whole_context and r in whole_context:
            files[r]["whole_context"] = s(R / f"whole_context/{r}.json")
            write_json(files[r]["whole_context"], {
                "route": r, "layer": int(L), "kl_div_score": float(whole_context[r]), "ce_loss_score": float(whole_context[r]),
                "kl_route": 0.1, "kl_zero": 3.0, "ce_clean": 3.5, "ce_route": 3.6, "ce_zero": 7.0, "n_tokens_kl": 8192,
                "n_contexts": 64, "n_ctx": 128})
    tables.table_routes(conditions=[files[r]["conditions"] for r in routes],
                        geometry=[s(R / f"geometry/{r}.json") for r in routes], table=s(R / "tables/routes.csv"),
                        whole_context=[files[r]["whole_context"] for r in routes if "whole_context" in files[r]],
                        sae=[files[r]["sae"] for r in routes if "sae" in files[r]], routes=list(routes), layer=L)
    fig = lambda name: {"png": s(R / f"figures/{name}.png"), "svg": s(R / f"figures/{name}.svg")}  # noqa: E731
    figures.fig_routes(routes_table=s(R / "tables/routes.csv"), **fig("routes_comparison"), dpi=dpi, style={}, layer=L)
    figures.fig1_all(per_site=[s(R / f"analysis/{r}/per_site.parquet") for r in routes],
                     correlation=[s(R / f"stats/{r}/correlation.json") for r in routes], **fig(FIGURES["fig1"]), dpi=dpi,
                     style={}, routes=list(routes), layer=L)
    figures.fig2_all(energy=[s(R / f"stats/{r}/energy.json") for r in routes], **fig(FIGURES["fig2"]), dpi=dpi, style={},
                     routes=list(routes), layer=L)
    figures.fig3_all(offsets=[files[r]["offsets"] for r in routes], **fig(FIGURES["fig3"]), dpi=dpi, style={},
                     routes=list(routes), layer=L)
    tables.table_frontier(routes_table=s(R / "tables/routes.csv"), conditions=[files[r]["conditions"] for r in routes],
                          table=s(R / "tables/frontier.csv"), kinds={r: "sae" if sae and r in sae else "file" for r in routes},
                          layer=L)
    figures.fig_frontier(frontier=s(R / "tables/frontier.csv"), **fig("frontier"), dpi=dpi, style={}, layer=L)
    report.gate(geometry=[s(R / f"geometry/{r}.json") for r in routes], floors=s(R / "span1/patch/floors.parquet"),
                reextract=[s(R / "reextract.json")], record=s(R / "gate.json"), min_cos=0.999,
                gold_repatch_kl_max=0.01, expected_fve=expected_fve or {}, routes=list(routes), layer=L)
    page_of = {r: s(route_page_path(main, L, r)) for r in routes}
    if pages:
        for r in routes:
            report.report_route(files=[], page=page_of[r], manifest=files[r], main=s(main), run_name=R.parent.name,
                                route_config={"kind": "file"}, reference=reference, layer=L, route=r)
    comparison = {"routes": s(R / "tables/routes.csv"), "fig_routes": fig("routes_comparison"),
                  **{key: fig(name) for key, name in FIGURES.items()}}
    frontier = {"table": s(R / "tables/frontier.csv"), "figure": fig("frontier")}
    return {"layers": {L: {"gate": s(R / "gate.json"), "routes": page_of, "comparison": comparison, "frontier": frontier}},
            "across": {}, "spans": [1], "route_files": {L: files}}


FIGURES = {"fig1": "fig1_geometry_vs_kl", "fig2": "fig2_damage_per_energy", "fig3": "fig3_kl_by_offset"}
"""The write-up's figures, by key, as the workflow names their files."""
