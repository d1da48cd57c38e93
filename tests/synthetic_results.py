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
import pyarrow as pa
import pyarrow.parquet as pq

from causal_kl.contracts import CONDITION_CHOICES, EVAL_MEAN, GEOMETRY, GOLD, PATCH, SITES
from causal_kl.io import vectors_to_arrow, write_json, write_parquet
from causal_kl.paths import FIG_NAMES

TOKENS = (" the", " model", " 42", "7", " 1000", "x", ".", " 3 ")
"""Token texts of the synthetic sites (some digits-only, some with spaces), chosen per site."""

FLOOR_SCALE = {"gold": 1e-4, "resample_same_doc": 10.0, "resample_cross_doc": 12.0, "zero": 6.0, "mean": 5.0}
ROUTE_SCALE = {"recon_goldnorm": 0.06, "recon_rawnorm": 0.08, "noise_matched": 0.025}


LAYER = 3
"""The synthetic run's one layer: its outputs lie under ``results/{run}/L3/``."""


def make_results(root: Path, run: str = "syn", routes: tuple[str, ...] = ("toy",), n_docs: int = 6,
                 per_doc: int = 8, d: int = 16, seed: int = 0, gate_ok: bool = True, spans: tuple[int, ...] = (1,),
                 shard_size: int | None = None, n_sites: int | None = None, layer: int = LAYER) -> Path:
    """Write the synthetic run under ``root/results/{run}`` (its layer's files under ``L{layer}/``, L3 by default); return the layer's
    directory (the run's own files, ``sites.parquet`` and ``run.json``, are in its parent).

    Every site has the floors (the last document has one site only: no same-document sibling) and each route's three
    conditions at offsets 0-31 after its span (every 7th site's document ends after offset 19), and for a span of
    k > 1 also at the k - 1 positions inside it (negative offsets). ``shard_size`` None writes what the aggregates
    make (``gold.parquet``, ``span{k}/gold.parquet``, ``span{k}/patch/{floors,route}.parquet``); a number writes
    their shards instead (``gold/shard_NNN.parquet`` ...), so that the aggregates themselves can run on them. The
    golds are drawn and written one shard at a time (``d`` may be the model's width at 100k sites), the patch rows
    vectorised per shard, each shard from its own seed: a shard's numbers do not depend on the shard size.
    ``n_sites`` (instead of ``n_docs``): that many sites, ``per_doc`` per document and one in the last.
    """
    from causal_kl.contracts import SPAN_GOLD

    rng = np.random.default_rng(seed)
    R = Path(root) / "results" / run / f"L{layer}"
    if n_sites is not None:  # n_sites - 1 sites in documents of per_doc, then a document of one site
        docs = np.append(np.arange(n_sites - 1) // per_doc, (n_sites - 2) // per_doc + 1 if n_sites > 1 else 0)
        n_docs = int(docs[-1]) + 1
    else:
        docs = np.repeat(np.arange(n_docs), per_doc)
        # the last document has one site only (no same-doc sibling); drop the rest of its sites
        docs = docs[~((docs == n_docs - 1) & (np.arange(n_docs * per_doc) % per_doc > 0))]
    n = len(docs)
    site_ids = np.arange(n, dtype=np.int64)
    positions = 50 + (np.arange(n) % per_doc) * 20
    token_ids = rng.integers(0, len(TOKENS), size=n)
    tokens = np.asarray(TOKENS, dtype=object)[token_ids]
    size = shard_size or n
    shard_of = site_ids // size
    write_parquet(R.parent / "sites.parquet", {
        "site_id": site_ids, "doc_id": [f"syn:train:{k}" for k in docs], "position": positions,
        "token_id": token_ids, "token": tokens.tolist(), "next_token_id": rng.integers(4, 200, size=n),
        "shard": shard_of,
    }, SITES)
    # resample choices, vectorised: a sibling of the same document (none for a document of one site) and a site of
    # another document, each uniform
    start = np.searchsorted(docs, docs, side="left")
    count = np.searchsorted(docs, docs, side="right") - start
    local = site_ids - start
    r = np.floor(rng.random(n) * np.maximum(count - 1, 1)).astype(np.int64)
    same = np.where(count > 1, start + r + (r >= local), -1)
    r = np.floor(rng.random(n) * (n - count)).astype(np.int64)
    cross = np.where(r < start, r, r + count)
    write_parquet(R / "conditions" / "choices.parquet",
                  {"site_id": site_ids, "same_doc_source": same, "cross_doc_source": cross}, CONDITION_CHOICES)
    clean_ce = rng.gamma(2.0, 1.5, size=n)
    n_shards = int(shard_of.max()) + 1 if n else 0
    shard_rows = [np.arange(j * size, min((j + 1) * size, n)) for j in range(n_shards)]
    gold_sum = np.zeros(d)
    geometry = {route: [] for route in routes}
    golds = [R / "gold.parquet", R / "stored_gold.parquet"] if shard_size is None else []
    with _Writers(golds, GOLD.schema(d)) as whole:
        for j, rows in enumerate(shard_rows):
            g_rng = np.random.default_rng([seed, 1, j])
            gold = g_rng.standard_normal(size=(len(rows), d), dtype=np.float32) + np.float32(0.5)
            gold_sum += gold.sum(axis=0, dtype=np.float64)
            table = _table({"site_id": site_ids[rows], "layer": np.full(len(rows), layer), "activation": gold}, GOLD, d)
            if shard_size is None:
                whole.write(table)
            else:
                write_parquet(R / "gold" / f"shard_{j:03d}.parquet", table, GOLD, d)
            for r_i, route in enumerate(routes):
                recon = gold + g_rng.normal(scale=0.3 + 0.2 * r_i, size=gold.shape)
                g, rc = gold.astype(np.float64), recon.astype(np.float64)
                gn, rn = np.linalg.norm(g, axis=1), np.linalg.norm(rc, axis=1)
                cos = (g * rc).sum(1) / gn / rn
                rg = rc / rn[:, None] * gn[:, None]
                geometry[route].append((cos, gn, rn, np.linalg.norm(rg - g, axis=1)))
    write_parquet(R / "conditions" / "mean.parquet", {"mean": (gold_sum / max(n, 1))[None, :].astype(np.float32),
                                                      "n": [n]}, EVAL_MEAN, d=d)
    for k in spans:
        if k > 1:  # the golds at each span's extra positions, as span_gold writes them
            whole_span = [R / f"span{k}" / "gold.parquet"] if shard_size is None else []
            with _Writers(whole_span, SPAN_GOLD.schema(d)) as out:
                for j, rows in enumerate(shard_rows):
                    s_rng = np.random.default_rng([seed, 2, k, j])
                    vec = s_rng.standard_normal(size=(len(rows) * (k - 1), d), dtype=np.float32)
                    table = _table({"site_id": np.repeat(site_ids[rows], k - 1),
                                    "j": np.tile(np.arange(1, k, dtype=np.int32), len(rows)), "activation": vec},
                                   SPAN_GOLD, d)
                    if shard_size is None:
                        out.write(table)
                    else:
                        write_parquet(R / f"span{k}" / "gold" / f"shard_{j:03d}.parquet", table, SPAN_GOLD, d)
            write_json(R / f"span{k}" / "sites.json", {"span": k, "n_sites": n, "n_eligible": n, "n_excluded": 0,
                                                      "excluded_site_ids": []})
        names = ["floors", *routes]
        for i, name in enumerate(names):
            whole_patch = [R / f"span{k}" / "patch" / f"{name}.parquet"] if shard_size is None else []
            with _Writers(whole_patch, PATCH.schema()) as out:
                for j, rows in enumerate(shard_rows):
                    p_rng = np.random.default_rng([seed, 3, k, i, j])
                    table = _patch_rows(site_ids[rows], same[rows] < 0, clean_ce[rows], k,
                                        "" if name == "floors" else name, i - 1, p_rng)
                    if shard_size is None:
                        out.write(table)
                    else:
                        write_parquet(R / f"span{k}" / "patch" / name / f"shard_{j:03d}.parquet", table, PATCH)

    for route in routes:
        cos, gn, rn, nn = (np.concatenate([part[c] for part in geometry[route]]) if n else np.zeros(0)
                           for c in range(4))
        write_parquet(R / "geometry" / f"{route}.parquet", {
            "site_id": site_ids, "cos": cos, "direction_mse": 2 * (1 - cos), "gold_norm": gn,
            "recon_norm": rn, "noise_norm": nn}, GEOMETRY)
        write_json(R / "geometry" / f"{route}.json", {"route": route, "variance": 0.6, "fve": float(1 - np.mean(2 * (1 - cos)) / 0.6),
                                                     "n": n, "recheck": None})
    write_json(R / "reextract.json", {"min_cos": 0.99995 if gate_ok else 0.9, "threshold": 0.999,
                                      "passed": gate_ok, "n": n})
    write_json(R.parent / "run.json", {"run": run, "config": {"seed": 42, "corpus": {"name": "syn", "split": "train",
                                                                             "rows": [0, n_docs]}},
                                "config_hash": "abc123", "model": "tiny", "layer": layer, "layers": [layer],
                                "code_version": "test", "production": False})
    return R


def _patch_rows(site_ids: np.ndarray, no_sibling: np.ndarray, clean_ce: np.ndarray, span: int, route: str,
                route_index: int, rng: np.random.Generator) -> pa.Table:
    """PATCH rows of some sites for the floors (``route`` "", clean included) or one route's three conditions, site by
    site, offset by offset, condition by condition, as ``results_table`` orders them."""
    scales = FLOOR_SCALE if route == "" else ROUTE_SCALE
    names = (["clean"] if route == "" else []) + list(scales)
    n_off = np.where(site_ids % 7 == 0, 20, 32) + span - 1  # some documents end before offset 31
    per_site = n_off * len(names)
    site = np.repeat(np.arange(len(site_ids)), per_site)
    step = np.arange(len(site)) - np.repeat(np.cumsum(per_site) - per_site, per_site)
    offset = (step // len(names) - (span - 1)).astype(np.int32)
    cond = step % len(names)
    names_arr = np.asarray(names)
    keep = ~((names_arr[cond] == "resample_same_doc") & no_sibling[site])
    site, offset, cond = site[keep], offset[keep], cond[keep]
    m = len(site)
    decay = np.where(offset <= 0, 1.0, 1e-3 * 0.5 ** np.maximum(offset, 0))
    scale = np.asarray([0.0 if c == "clean" else scales[c] for c in names])[cond]
    ce0 = clean_ce[site]
    if route == "":
        kl = scale * decay * rng.lognormal(0, 0.5, size=m)
        ce, dce = ce0 + kl * 0.9, kl * 0.9 * rng.normal(1, 0.1, size=m)
    else:
        kl = scale * (1 + route_index) * decay * rng.lognormal(0, 0.8, size=m) * (1 + 0.3 * ce0)
        ce, dce = ce0 + kl * 0.5, kl * 0.5 * rng.normal(1, 0.3, size=m)
    is_clean = names_arr[cond] == "clean"
    kl, dce = np.where(is_clean, 0.0, kl), np.where(is_clean, 0.0, dce)
    return _table({"site_id": site_ids[site], "route": pa.array([route] * m, pa.string()),
                   "condition": pa.array(names_arr[cond].tolist(), pa.string()), "offset": offset, "kl": kl, "ce": ce,
                   "delta_ce": dce, "span": np.full(m, span, np.int32)}, PATCH)


def _table(columns: dict, contract, d: int | None = None) -> pa.Table:
    """``columns`` as a table of ``contract`` (vectors as fixed-size lists)."""
    cols = {k: vectors_to_arrow(v) if isinstance(v, np.ndarray) and v.ndim == 2 else v for k, v in columns.items()}
    schema = contract.schema(d)
    return pa.table(cols).select(schema.names).cast(schema)


class _Writers:
    """Parquet writers of one schema for some paths (none: nothing written), fed a table at a time."""

    def __init__(self, paths: list[Path], schema: pa.Schema):
        self.paths, self.schema, self.writers = paths, schema, []

    def __enter__(self):
        for p in self.paths:
            p.parent.mkdir(parents=True, exist_ok=True)
            self.writers.append(pq.ParquetWriter(p, self.schema))
        return self

    def write(self, table: pa.Table) -> None:
        for w in self.writers:
            w.write_table(table)

    def __exit__(self, *exc):
        for w in self.writers:
            w.close()


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


FIGURES = FIG_NAMES
"""The write-up's figures, by key, as the workflow names their files."""
