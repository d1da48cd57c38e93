"""Corpus slicing and NLA-compatible site sampling (NLA stage 0).

A document is row ``r`` of ``corpus:split``; its ``doc_id`` is ``f"{corpus}:{split}:{r}"``.
Each document is tokenized with special tokens (BOS) and truncated to ``max_length``.
Candidate positions are ``p >= min_position`` whose token is not special; ``k =
min(positions_per_doc, len(candidates))`` of them are drawn with ``rng.sample`` where
``rng = random.Random(hashlib.sha256(f"{seed}|{doc_id}".encode()).digest())``.
Documents without a candidate are skipped and counted. Sites are numbered in stage-0
order (documents in row order, each document's positions in the order ``rng.sample``
returned them) and capped at ``max_sites`` by taking the first N.
"""

from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import pyarrow as pa

from causal_kl.errors import CausalKLError

log = logging.getLogger(__name__)


def doc_id_for(corpus: str, split: str, row: int) -> str:
    return f"{corpus}:{split}:{row}"


def doc_rng(seed: int, doc_id: str) -> random.Random:
    """The per-document RNG of NLA stage 0."""
    return random.Random(hashlib.sha256(f"{seed}|{doc_id}".encode()).digest())


def candidate_positions(input_ids: Sequence[int], special_ids: Iterable[int], min_position: int) -> list[int]:
    """Positions ``>= min_position`` whose token is not a special token, in order."""
    special = set(int(s) for s in special_ids)
    return [p for p in range(min_position, len(input_ids)) if int(input_ids[p]) not in special]


def sample_doc_positions(input_ids: Sequence[int], special_ids: Iterable[int], seed: int, doc_id: str,
                         k: int, min_position: int) -> list[int]:
    """The positions stage 0 samples in one document, in ``rng.sample`` order (empty if no candidate)."""
    cands = candidate_positions(input_ids, special_ids, min_position)
    if not cands:
        return []
    return doc_rng(seed, doc_id).sample(cands, k=min(k, len(cands)))


def load_corpus_rows(corpus: dict, rows: Sequence[int] | None = None, source: str = "config") -> list[tuple[int, str]]:
    """Rows ``[start, stop)`` of the corpus as ``(row, text)``.

    ``corpus.path`` (a local parquet file, or a folder of them read in name order) is read with
    pyarrow, only the rows asked for; otherwise ``corpus.name`` is streamed from the hub with
    ``datasets`` and sliced.
    """
    start, stop = rows if rows is not None else corpus["rows"]
    if stop <= start:
        raise CausalKLError(source, "corpus.rows", f"empty row range [{start}, {stop})", "give rows as [start, stop) with stop > start")
    column = corpus["column"]
    path = corpus.get("path")
    texts = _local_rows(path, column, start, stop) if path else _hub_rows(corpus, column, start, stop)
    where = path or f"{corpus['name']}:{corpus.get('split')}"
    if not texts and start == 0:
        raise CausalKLError(where, "corpus.path", "the corpus holds no rows",
                            f"point corpus.path at a corpus with one document per row (its text in column '{column}')")
    if not texts:  # start lies past the end: the rows read say nothing of how many there are
        n = _local_row_count(path) if path else None
        if n is None:
            raise CausalKLError(where, "corpus.rows", f"rows [{start}, {stop}) start past the end of the corpus (no row {start})",
                                "set corpus.rows to start below the corpus' row count")
        raise CausalKLError(where, "corpus.rows", f"rows [{start}, {stop}) start past the end of the corpus ({n} rows)",
                            f"set corpus.rows within [0, {n}]")
    if len(texts) < stop - start:
        raise CausalKLError(where, "corpus.rows", f"rows [{start}, {stop}) run past the end of the corpus ({start + len(texts)} rows)",
                            f"set corpus.rows within [0, {start + len(texts)}]")
    return [(start + i, t or "") for i, t in enumerate(texts)]


def _local_row_count(path: str) -> int:
    """The rows of a local corpus (a parquet file or a folder of them), from the files' metadata alone."""
    import pyarrow.parquet as pq

    p = Path(path)
    return sum(pq.ParquetFile(f).metadata.num_rows for f in (sorted(p.glob("*.parquet")) if p.is_dir() else [p]))


def _local_rows(path: str, column: str, start: int, stop: int) -> list[str]:
    import pyarrow.parquet as pq

    p = Path(path)
    if not p.exists():
        raise CausalKLError(path, "corpus.path", "corpus file not found",
                            "build the demo corpus (snakemake resources/demo/corpus.parquet) or fix corpus.path")
    files = sorted(p.glob("*.parquet")) if p.is_dir() else [p]
    texts: list[str] = []
    offset = 0
    for f in files:
        try:
            pf = pq.ParquetFile(f)
        except Exception as e:  # pyarrow raises several types for a file that is not parquet
            raise CausalKLError(f, "corpus", f"cannot open the corpus ({str(e).splitlines()[0]})",
                                "point corpus.path at parquet files") from e
        names = pf.schema_arrow.names
        if column not in names:
            raise CausalKLError(f, "corpus.column", f"column '{column}' not in the corpus (has {sorted(names)})",
                                f"set corpus.column to one of {sorted(names)}")
        n = pf.metadata.num_rows
        lo, hi = max(start - offset, 0), min(stop - offset, n)
        if lo < hi:
            texts += pf.read(columns=[column]).column(column).slice(lo, hi - lo).to_pylist()
        offset += n
        if offset >= stop:
            break
    return texts


def _hub_rows(corpus: dict, column: str, start: int, stop: int) -> list[str]:
    import datasets

    datasets.logging.set_verbosity_error()
    where = f"{corpus['name']}:{corpus.get('split')}"
    try:
        ds = datasets.load_dataset(corpus["name"], split=corpus.get("split", "train"), streaming=True)
    except Exception as e:  # datasets raises many types for a bad source
        raise CausalKLError(corpus["name"], "corpus", f"cannot open the corpus ({str(e).splitlines()[0]})",
                            "check corpus.name/split, or give a local parquet via corpus.path") from e
    features = getattr(ds, "features", None)
    if features is not None and column not in features:
        raise CausalKLError(where, "corpus.column", f"column '{column}' not in the corpus (has {sorted(features)})",
                            f"set corpus.column to one of {sorted(features)}")
    texts = []
    for rec in ds.skip(start).take(stop - start):
        if column not in rec:
            raise CausalKLError(where, "corpus.column", f"column '{column}' not in the corpus (has {sorted(rec)})",
                                f"set corpus.column to one of {sorted(rec)}")
        texts.append(rec[column])
    return texts


def load_tokenizer(path: str):
    """The tokenizer saved beside a model (``model.path``), with a one-line error when there is none."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise CausalKLError(path, "tokenizer", f"cannot load the tokenizer ({str(e).splitlines()[0]})",
                            "point model.path at a folder with tokenizer files, or a hub id with network access") from e


def tokenize_docs(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Tokenize with special tokens (BOS as the model expects), truncated at ``max_length``."""
    enc = tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=max_length)
    return [list(map(int, ids)) for ids in enc["input_ids"]]


def special_token_ids(tokenizer) -> set[int]:
    ids = set(int(i) for i in (tokenizer.all_special_ids or []))
    return ids


@dataclass
class SiteSample:
    """Stage-0 output: documents (with their kept tokens) and sites in stage-0 order."""

    docs: pa.Table
    sites: pa.Table
    stats: dict = field(default_factory=dict)


def sample_sites(doc_ids: Sequence[str], rows: Sequence[int], token_ids: Sequence[Sequence[int]], special_ids: Iterable[int],
                 seed: int, positions_per_doc: int, min_position: int, max_sites: int, shard_size: int,
                 decode: Callable[[int], str] | None = None) -> SiteSample:
    """Sample sites in every document, cap at ``max_sites``, and assign shards.

    ``docs`` keeps each document's tokens (after truncation to ``max_length``: ``n_tokens`` of them),
    so every readout offset, and every position of a span, has its true tokens; the patch engine and
    gold extraction cut each forward after the last position they need.
    ``decode`` turns a token id into its text (the sites' ``token`` column; empty without it).
    """
    special = set(special_ids)
    site_rows: list[tuple[str, int, int, int]] = []
    kept_docs: list[tuple[str, int, int, list[int]]] = []
    skipped = 0
    for doc_id, row, ids in zip(doc_ids, rows, token_ids):
        if len(site_rows) >= max_sites:
            break
        positions = sample_doc_positions(ids, special, seed, doc_id, positions_per_doc, min_position)
        if not positions:
            skipped += 1
            continue
        positions = positions[: max_sites - len(site_rows)]
        for p in positions:
            nxt = int(ids[p + 1]) if p + 1 < len(ids) else -1
            site_rows.append((doc_id, p, int(ids[p]), nxt))
        kept_docs.append((doc_id, int(row), len(ids), list(ids)))
    n = len(site_rows)
    sites = pa.table({
        "site_id": pa.array(range(n), pa.int64()),
        "doc_id": pa.array([s[0] for s in site_rows], pa.string()),
        "position": pa.array([s[1] for s in site_rows], pa.int64()),
        "token_id": pa.array([s[2] for s in site_rows], pa.int64()),
        "token": pa.array([decode(s[2]) if decode else "" for s in site_rows], pa.string()),
        "next_token_id": pa.array([s[3] for s in site_rows], pa.int64()),
        "shard": pa.array([i // shard_size for i in range(n)], pa.int64()),
    })
    docs = pa.table({
        "doc_id": pa.array([d[0] for d in kept_docs], pa.string()),
        "row": pa.array([d[1] for d in kept_docs], pa.int64()),
        "n_tokens": pa.array([d[2] for d in kept_docs], pa.int64()),
        "input_ids": pa.array([d[3] for d in kept_docs], pa.list_(pa.int32())),
    })
    stats = {"n_sites": n, "n_docs": len(kept_docs), "docs_without_candidates": skipped,
             "n_docs_read": len(doc_ids)}
    return SiteSample(docs=docs, sites=sites, stats=stats)


def build_sites(corpus: dict, sampling: dict, seed: int, tokenizer, source: str = "config") -> SiteSample:
    """Read the corpus rows (``corpus``), tokenize and sample sites (``sampling``: the config's ``sites`` block)."""
    rows = load_corpus_rows(corpus, source=source)
    doc_ids = [doc_id_for(corpus["name"], corpus.get("split", "train"), r) for r, _ in rows]
    token_ids = tokenize_docs(tokenizer, [t for _, t in rows], sampling["max_length"])
    sample = sample_sites(doc_ids, [r for r, _ in rows], token_ids, special_token_ids(tokenizer), seed,
                          sampling["positions_per_doc"], sampling["min_position"], sampling["max_sites"],
                          sampling["shard_size"], decode=lambda t: tokenizer.decode([t]))
    if not any(t.strip() for _, t in rows):
        raise CausalKLError(corpus.get("path") or f"{corpus['name']}:{corpus.get('split')}", "corpus.column",
                            f"column '{corpus['column']}' is empty in every row of corpus.rows {list(corpus['rows'])} (no text "
                            "to sample sites from)", "set corpus.column to the column that holds the documents' text, or "
                            "corpus.rows to rows that have text")
    if sample.stats["n_sites"] == 0:
        raise CausalKLError(source, "corpus.rows", "no document has a candidate position (every document is shorter than sites.min_position)",
                            "use longer documents, more rows, or a smaller sites.min_position")
    return sample


def shard_table(sites: pa.Table, shard: int) -> pa.Table:
    import pyarrow.compute as pc

    return sites.filter(pc.equal(sites["shard"], shard))
