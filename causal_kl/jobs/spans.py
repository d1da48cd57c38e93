"""Jobs of ``rules/spans.smk``: a span's extra-position golds, its recorded choices and noise, each route's
reconstruction at the extra positions."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from causal_kl.contracts import CONDITION_CHOICES, SPAN_GOLD, SPAN_NOISE, SPAN_RECON
from causal_kl.io import provenance as provenance_record
from causal_kl.io import (concat_parquet, parquet_rows, parquet_schema, read_docs, read_docs_table, read_gold,
                          read_parquet, read_sites, read_span_gold, write_json, write_parquet)
from causal_kl.hooks import parse_point
from causal_kl.jobs.gold import block_states, load_run_model

log = logging.getLogger(__name__)


def _span_rows(site_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(site_id, j)`` of every extra position of the sites' spans, site by site, j = 1 .. k-1."""
    ids = np.repeat(np.asarray(site_ids, dtype=np.int64), k - 1)
    js = np.tile(np.arange(1, k, dtype=np.int32), len(site_ids))
    return ids, js


def _write_span(path: str, contract, column: str, site_ids: np.ndarray, js: np.ndarray, vectors: np.ndarray,
                meta: dict) -> None:
    """A SPAN_* table (empty ones get a width-1 vector column: their width is unknown)."""
    if len(site_ids) == 0:
        d = vectors.shape[-1] if vectors.ndim == 2 and vectors.shape[-1] else 1
        vectors = np.zeros((0, d), np.float32)
    write_parquet(path, {"site_id": pa.array(site_ids, pa.int64()), "j": pa.array(js, pa.int32()),
                         column: vectors.astype(np.float32)}, contract, vectors.shape[-1], meta=meta)


def span_gold(sites: str, docs: str, model_dir: list[str], gold: str, model: dict, model_fingerprint: str | None,
              dtype: str, device: str, layer: str, span: str, shard: str, provenance: dict) -> None:
    """The activation at the job's point at the extra positions p+1 .. p+k-1 of every span of one shard that fits its
    document."""
    from causal_kl.spans import eligible_sites, extension_positions

    k, point = int(span), parse_point(layer)
    table = read_sites(sites)
    mask, summary = eligible_sites(table, read_docs_table(docs), k)
    table = table.filter(pa.array(mask))
    meta = provenance_record(**provenance, dtype=dtype, model_fingerprint=model_fingerprint,
                             n_excluded=summary["n_excluded"])
    ids, js = _span_rows(table["site_id"].to_numpy(), k)
    if table.num_rows == 0:
        _write_span(gold, SPAN_GOLD, "activation", ids, js, np.zeros((0, 0), np.float32), meta)
        return
    positions = extension_positions(table["position"].to_numpy(), k).reshape(-1)
    doc_ids = np.repeat(np.asarray(table["doc_id"].to_pylist(), dtype=object), k - 1).tolist()
    loaded = load_run_model(model, dtype, device, layer=point)
    vec = block_states().golds(loaded, read_docs(docs), doc_ids, positions.tolist(), point.layer, progress=True,
                               hook=point.hook)
    log.info("span %d golds: %d sites, %d extra positions (%d sites excluded: span past the document's end)",
             k, table.num_rows, len(positions), summary["n_excluded"])
    _write_span(gold, SPAN_GOLD, "activation", ids, js, vec, meta)


def span_gold_aggregate(shards: list[str], gold: str, layer: str, span: str, provenance: dict) -> None:
    """Every span-gold shard -> ``span{k}/gold.parquet``, streamed a row group at a time (empty shards, whose width is
    unknown, left out)."""
    schemas = {p: parquet_schema(p, SPAN_GOLD) for p in shards}
    widths = {p: sch.field("activation").type.list_size for p, sch in schemas.items() if parquet_rows(p)}
    if not widths:
        _write_span(gold, SPAN_GOLD, "activation", np.zeros(0, np.int64), np.zeros(0, np.int32),
                    np.zeros((0, 0), np.float32), provenance_record(**provenance))
        return
    concat_parquet(list(widths), gold, SPAN_GOLD, max(widths.values()), meta=provenance_record(**provenance))


def span_conditions(gold: str, sites: str, docs: str, choices: str, noise: str, summary: str, seed: int, layer: str,
                    span: str, provenance: dict) -> None:
    """A span's seeded resample choices (among the sites whose span fits) and its extra positions' noise
    directions, recorded so reruns are bit-identical; how many sites the span excludes."""
    from causal_kl.spans import eligible_sites, span_choices, span_noise_directions

    k = int(span)
    table = read_sites(sites)
    mask, record = eligible_sites(table, read_docs_table(docs), k)
    _, vectors = read_gold(gold)
    kept = table.filter(pa.array(mask))
    ids = kept["site_id"].to_numpy()
    meta = provenance_record(**provenance, seed=seed)
    write_parquet(choices, span_choices(ids.tolist(), kept["doc_id"].to_pylist(), seed), CONDITION_CHOICES, meta=meta)
    directions = span_noise_directions(ids.tolist(), k, vectors.shape[1], seed)  # [n, k-1, d]
    rows, js = _span_rows(ids, k)
    _write_span(noise, SPAN_NOISE, "direction", rows, js, directions.reshape(-1, vectors.shape[1]), meta)
    write_json(summary, record)
    log.info("span %d: %d of %d sites fit their document (%d excluded)", k, record["n_eligible"], record["n_sites"],
             record["n_excluded"])


def recon_span(span_gold: str, span_gold_in: list[str], sites: str, train_gold: list[str], sae: list[str], vectors: list[str],
               explanations: list[str], checkpoint: list[str], model_dir: list[str], recon: str, route_entry: dict,
               fingerprints: dict, eval_rows: list[int], model: dict, model_fingerprint: str | None, dtype: str,
               device: str, layer: str, route: str, span: str, provenance: dict) -> None:
    """A route's reconstruction of the golds at a span's extra positions; a route that cannot reconstruct other
    positions than its sites (or whose file lacks some) writes none and says why (``skipped`` in the provenance).
    A transcoder reconstructs from the golds of its input hook at those positions (``span_gold_in``)."""
    from causal_kl.routes.reconstructors import build_reconstructor

    k, point = int(span), parse_point(layer)
    layer = point.layer
    ids, js, golds = read_span_gold(span_gold_in[0] if span_gold_in else span_gold)
    table = read_sites(sites)
    doc_of = dict(zip(table["site_id"].to_pylist(), table["doc_id"].to_pylist()))
    pos_of = dict(zip(table["site_id"].to_pylist(), table["position"].to_pylist()))
    where = [(doc_of[int(s)], int(pos_of[int(s)]) + int(j)) for s, j in zip(ids, js)]
    meta = provenance_record(**provenance, route=route, kind=route_entry["kind"], route_config=route_entry,
                             fingerprints=fingerprints)
    d = read_parquet(span_gold).schema.field("activation").type.list_size
    if not len(ids):  # no site's span fits: nothing to reconstruct (and the empty table's width is unknown)
        _write_span(recon, SPAN_RECON, "reconstruction", ids, js, np.zeros((0, d), np.float32), meta)
        return
    loaded = None
    if route_entry["kind"] == "text_channel":
        loaded = load_run_model(model, dtype, device, with_tokenizer=True, layer=point)
    rebuilt = build_reconstructor({**route_entry, "hook": point.hook}, layer, route=route, d_model=golds.shape[1],
                                  train_gold=train_gold[0] if train_gold else None,
                                  eval_doc_ids=set(doc_of.values()), loaded=loaded, dtype=dtype, device=device)
    reason = rebuilt.reason
    if reason is None and rebuilt.needs_where:
        missing = rebuilt.missing(where)
        if missing:
            reason = (f"its file has no vector for {len(missing)} of the {len(where)} extra positions of span {k} "
                      f"(e.g. {missing[0][0]} position {missing[0][1]})")
    if reason is not None:
        log.info("route %s, span %d: no reconstruction at the extra positions: %s", route, k, reason)
        _write_span(recon, SPAN_RECON, "reconstruction", ids[:0], js[:0], np.zeros((0, d), np.float32),
                    {**meta, "skipped": reason})
        return
    out = rebuilt(golds, where)
    log.info("route %s, span %d: %d extra positions reconstructed", route, k, len(out))
    _write_span(recon, SPAN_RECON, "reconstruction", ids, js, out, meta)
