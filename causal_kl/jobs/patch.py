"""Jobs of ``rules/patch.smk``: the recorded conditions, the patch engine per shard (floors, routes), the aggregate."""

from __future__ import annotations

import logging
import time

import numpy as np
import pyarrow as pa

from causal_kl.conditions import (FLOOR_CONDITIONS, RESAMPLE_SOURCE_COLUMNS, ROUTE_CONDITIONS, SAME_DOC, eval_mean,
                                  floor_vectors, noise_directions, resample_choices, route_vectors)
from causal_kl.contracts import CONDITION_CHOICES, EVAL_MEAN, NOISE_DIRECTIONS, PATCH
from causal_kl.errors import CausalKLError
from causal_kl.io import concat_parquet
from causal_kl.io import provenance as provenance_record
from causal_kl.io import (read_choices, read_docs, read_gold, read_mean, read_noise, read_recon, read_sites,
                          vectors_for_sites, write_parquet)
from causal_kl.hooks import Point, parse_point
from causal_kl.jobs.gold import load_run_model

log = logging.getLogger(__name__)


def conditions(gold: str, sites: str, choices: str, mean: str, noise: str, seed: int, layer: str, provenance: dict) -> None:
    """Seeded resample choices, the eval-set mean gold and the noise directions, recorded so reruns are bit-identical."""
    table = read_sites(sites)
    ids, vectors = read_gold(gold)
    if not np.array_equal(ids, table["site_id"].to_numpy()):
        raise CausalKLError(gold, "site_id", "the golds' site ids do not match sites.parquet",
                            "delete the golds and rerun, so they are extracted for this run's sites")
    meta = provenance_record(**provenance, seed=seed)
    picks = resample_choices(ids.tolist(), table["doc_id"].to_pylist(), seed)
    write_parquet(choices, picks, CONDITION_CHOICES, meta=meta)
    write_parquet(mean, {"mean": eval_mean(vectors)[None].astype(np.float32), "n": pa.array([len(ids)], pa.int64())},
                  EVAL_MEAN, vectors.shape[1], meta=meta)
    directions = noise_directions(ids.tolist(), vectors.shape[1], seed).astype(np.float32)
    write_parquet(noise, {"site_id": ids, "direction": directions}, NOISE_DIRECTIONS, vectors.shape[1], meta=meta)
    n_no_sib = int((picks[RESAMPLE_SOURCE_COLUMNS[SAME_DOC]].to_numpy() < 0).sum())
    log.info("conditions: %d sites, %d without a same-document sibling (excluded from %s)", len(ids), n_no_sib, SAME_DOC)


_CLEAN_CACHE = None
"""This process's clean passes (a ``patching.CleanCache``): in the model server it outlives a job, so the
floors and every route of a shard, run one after another (shard priority), share each document's pass."""


def clean_cache():
    global _CLEAN_CACHE
    if _CLEAN_CACHE is None:
        from causal_kl.patching import CleanCache

        _CLEAN_CACHE = CleanCache()
    return _CLEAN_CACHE


def _patch_shard(loaded, sites: pa.Table, docs: dict[str, list[int]], point: Point, patch: dict,
                 variants: dict[str, tuple[np.ndarray, np.ndarray]], label: str) -> list:
    """Patch every site of a shard at ``point`` (block L's output, or a hook inside block L): ``variants[name] =
    (vectors [n, width], valid [n])`` in the hook's space; documents batched together."""
    import torch

    from causal_kl.patching import SiteVariants, patch_documents

    by_doc: dict[str, list[int]] = {}
    for i, d in enumerate(sites["doc_id"].to_pylist()):
        by_doc.setdefault(d, []).append(i)
    site_ids = sites["site_id"].to_pylist()
    positions = sites["position"].to_pylist()
    names = list(variants)
    documents = []
    for doc, rows in by_doc.items():
        sv = []
        for i in rows:
            keep = [n for n in names if variants[n][1][i]]
            vec = torch.from_numpy(np.stack([variants[n][0][i] for n in keep]))
            sv.append(SiteVariants(site_ids[i], positions[i], keep, vec))
        documents.append((docs[doc], sv))
    cache = clean_cache()
    passes, hits = cache.clean_passes, cache.hits
    results = patch_documents(loaded, documents, point.layer, patch["method"], patch["sites_per_batch"], cache,
                              list(by_doc), label=label, hook=point.hook)
    log.info("patch %s: %d sites in %d documents; clean passes: %d computed, %d from the cache", label, len(site_ids),
             len(documents), cache.clean_passes - passes, cache.hits - hits)
    return [r for doc_results in results for r in doc_results]


def method_provenance(loaded, method: str) -> dict:
    """The provenance fields of the patch method that ran: ``method`` is ``naive`` where ``fast`` was asked for and the
    fast path could not run the model (then also ``method_asked`` and ``fast_path_unavailable``, the reason)."""
    from causal_kl.patching import fast_path_unavailable, method_used

    used = method_used(loaded, method)
    if used == method:
        return {"method": used}
    return {"method": used, "method_asked": method, "fast_path_unavailable": fast_path_unavailable(loaded)}


def _span_golds(gold: str, span_gold: list[str], want: np.ndarray, k: int) -> np.ndarray:
    """The golds at every position of the spans of the sites ``want``: ``[n, d]`` for k = 1, ``[n, k, d]`` else."""
    from causal_kl.io import read_span_gold, span_vectors_for_sites

    gold_ids, gold_vectors = read_gold(gold)
    site = vectors_for_sites(gold_ids, gold_vectors, want, gold)
    if k == 1:
        return site
    ext = span_vectors_for_sites(*read_span_gold(span_gold[0], site.shape[1]), want, k, span_gold[0])
    return np.concatenate([site[:, None], ext], axis=1)


def _eligible_shard(sites: str, docs: str, span: int) -> pa.Table:
    """The shard's sites whose span fits their document (every site for a span of 1)."""
    table = read_sites(sites)
    if span == 1:
        return table
    from causal_kl.io import read_docs_table
    from causal_kl.spans import eligible_sites

    mask, summary = eligible_sites(table, read_docs_table(docs), span)
    if summary["n_excluded"]:
        log.info("span %d: %d of %d sites of the shard excluded (their span runs past the document's end)", span,
                 summary["n_excluded"], summary["n_sites"])
    return table.filter(pa.array(mask))


def patch_floors(sites: str, docs: str, gold: str, choices: str, mean: str, span_gold: list[str], model_dir: list[str],
                 floors: str, model: dict, model_fingerprint: str | None, patch: dict, dtype: str, device: str, layer: str,
                 span: str, shard: str, provenance: dict) -> None:
    """The route-independent conditions (and clean) for one shard, at one point and span length (in the point's space:
    its golds, resamples, zero and mean)."""
    k, point = int(span), parse_point(layer)
    table = _eligible_shard(sites, docs, k)
    meta = provenance_record(**provenance, method=patch["method"], dtype=dtype, model_fingerprint=model_fingerprint)
    if table.num_rows == 0:
        write_parquet(floors, PATCH.schema().empty_table(), PATCH, meta=meta)
        return
    want = table["site_id"].to_numpy()
    picks = read_choices(choices)
    if k == 1:  # the single-site splice, exactly as before spans
        all_ids, all_gold = read_gold(gold)
        fv = floor_vectors(all_gold, all_ids.tolist(), picks, read_mean(mean, all_gold.shape[1]), choices)
        rows = vectors_for_sites(all_ids, np.arange(len(all_ids)), want, gold)
        variants = {c: (fv[c][0][rows], fv[c][1][rows]) for c in FLOOR_CONDITIONS}
    else:  # resample sources may lie in other shards: the span golds of every site whose span fits
        from causal_kl.spans import span_floor_vectors

        ids = picks["site_id"].to_numpy()
        spans = _span_golds(gold, span_gold, ids, k)  # [n, k, d]
        mean_gold = read_mean(mean, spans.shape[-1])
        fv = span_floor_vectors(spans[:, 0], spans[:, 1:], ids.tolist(), picks, mean_gold, choices)
        rows = vectors_for_sites(ids, np.arange(len(ids)), want, choices)
        variants = {c: (fv[c][0][rows], fv[c][1][rows]) for c in FLOOR_CONDITIONS}
    loaded = load_run_model(model, dtype, device, layer=point)
    t0 = time.time()
    results = _patch_shard(loaded, table, read_docs(docs), point, patch, variants, f"floors, span {k}")
    meta.update(method_provenance(loaded, patch["method"]))  # what ran: naive where the fast path could not
    log.info("floors (span %d): %d sites in %.1f s", k, table.num_rows, time.time() - t0)
    from causal_kl.patching import results_table

    write_parquet(floors, results_table(results, "", include_clean=True), PATCH, meta=meta)


def patch_route(sites: str, docs: str, gold: str, recon: str, noise: str, span_gold: list[str], span_recon: list[str],
                span_noise: list[str], model_dir: list[str], patched: str, model: dict, model_fingerprint: str | None,
                patch: dict, dtype: str, device: str, seed: int, layer: str, route: str, span: str, shard: str,
                provenance: dict) -> None:
    """The three route conditions (reconstruction at gold norm and raw norm, matched noise) of one route for one shard,
    at one layer and span length (each position of a span gets its own reconstruction and matched noise)."""
    k, point = int(span), parse_point(layer)
    table = _eligible_shard(sites, docs, k)
    meta = provenance_record(**provenance, route=route, method=patch["method"], dtype=dtype,
                             model_fingerprint=model_fingerprint)
    skipped = _span_skip_reason(span_recon) if k > 1 else None
    if table.num_rows == 0 or skipped:
        write_parquet(patched, PATCH.schema().empty_table(), PATCH, meta={**meta, "skipped": skipped})
        if skipped:
            log.info("route %s, span %d: skipped (%s)", route, k, skipped)
        return
    want = table["site_id"].to_numpy()
    golds = _span_golds(gold, span_gold, want, k)
    d = golds.shape[-1]
    recons = vectors_for_sites(*read_recon(recon, d), want, recon)
    directions = vectors_for_sites(*read_noise(noise, d), want, noise)
    if k == 1:  # the single-site splice, exactly as before spans
        rv = route_vectors(golds, recons, want.tolist(), seed, directions=directions)
    else:
        from causal_kl.io import read_span_noise, read_span_recon, span_vectors_for_sites
        from causal_kl.spans import span_route_vectors

        ext_recon = span_vectors_for_sites(*read_span_recon(span_recon[0], d), want, k, span_recon[0])
        ext_dirs = span_vectors_for_sites(*read_span_noise(span_noise[0], d), want, k, span_noise[0])
        rv = span_route_vectors(golds[:, 0], golds[:, 1:], recons, ext_recon, want.tolist(), seed, directions, ext_dirs)
    ones = np.ones(len(want), dtype=bool)
    variants = {c: (rv[c], ones) for c in ROUTE_CONDITIONS}
    loaded = load_run_model(model, dtype, device, layer=point)
    t0 = time.time()
    results = _patch_shard(loaded, table, read_docs(docs), point, patch, variants, f"{route}, span {k}")
    meta.update(method_provenance(loaded, patch["method"]))  # what ran: naive where the fast path could not
    log.info("route %s (span %d): %d sites in %.1f s", route, k, table.num_rows, time.time() - t0)
    from causal_kl.patching import results_table

    write_parquet(patched, results_table(results, route, include_clean=False), PATCH, meta=meta)


def _span_skip_reason(span_recon: list[str]) -> str | None:
    """Why a route has no reconstruction at a span's extra positions (its ``recon_span`` status), or None."""
    from causal_kl.io import read_provenance

    return (read_provenance(span_recon[0]) or {}).get("skipped")


def shards_method(shards: list[str]) -> dict:
    """The patch method the shards record having run (``method_provenance``), for their aggregate: one method, or
    several joined by ``+`` where shards differ; with the fast path's reason where a shard fell back."""
    from causal_kl.io import read_provenance

    metas = [read_provenance(p) for p in shards]
    methods = sorted({m["method"] for m in metas if m.get("method")})
    out: dict = {"method": "+".join(methods)} if methods else {}
    reasons = sorted({m["fast_path_unavailable"] for m in metas if m.get("fast_path_unavailable")})
    if reasons:
        out.update(method_asked="fast", fast_path_unavailable="; ".join(reasons))
    return out


def patch_floors_aggregate(shards: list[str], patch: str, layer: str, span: str, provenance: dict) -> None:
    """Every floors shard -> ``span{k}/patch/floors.parquet`` (what every route's analysis compares with), streamed a
    row group at a time; it records the method its shards ran."""
    concat_parquet(list(shards), patch, PATCH, meta=provenance_record(**provenance, **shards_method(shards)))


def patch_route_aggregate(shards: list[str], patch: str, layer: str, route: str, span: str, provenance: dict) -> None:
    """Every shard of one route -> ``span{k}/patch/{route}.parquet``, streamed: a route added later reruns only its own
    analysis.

    A route skipped at this span (its shards say why) stays skipped, with the reason, in the aggregate."""
    from causal_kl.io import read_provenance

    reasons = {read_provenance(p).get("skipped") for p in shards}
    skipped = reasons.pop() if len(reasons) == 1 else None
    concat_parquet(list(shards), patch, PATCH, meta=provenance_record(**provenance, route=route, skipped=skipped,
                                                                      **shards_method(shards)))


def patch_aggregate(floors: list[str], routes: list[str], index: str, layer: str, provenance: dict) -> None:
    """The floors and every route of every span -> ``results/{run}/L{layer}/patch.json``: the layer's patch dataset
    (those files, scanned together by ``causal_kl.io.patch_dataset`` or duckdb), with each file's span, route and
    rows. No row is copied: at 100k sites a layer's patch rows are ~200 M."""
    from causal_kl.io import patch_index, write_json

    record = patch_index([*floors, *routes], index)
    point = parse_point(layer)
    write_json(index, {**record, "layer": point.layer, "hook": point.hook, "point": point.name,
                       "provenance": provenance_record(**provenance)})
