"""Golds of route-training documents, sampled exactly like the eval sites.

Routes that learn (``pca``, ``text_channel``) fit on documents disjoint from the eval documents:
rows ``[start, stop)`` of the same corpus, tokenized, sampled (NLA stage 0, same seed and
``sites`` settings) and extracted at the same layer as the eval golds. One file per row range,
``results/{run}/L{layer}/train_gold/rows_{start}_{stop}.parquet``, is shared by every route training on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from causal_kl.contracts import GOLD
from causal_kl.errors import CausalKLError
from causal_kl.io import arrow_to_vectors, check_vectors, read_parquet, vectors_to_arrow
from causal_kl.sites import doc_id_for, load_corpus_rows, sample_sites, special_token_ids, tokenize_docs

if TYPE_CHECKING:  # the model code is imported where it runs: a job's own process stays free of torch
    from causal_kl.models import LoadedModel

def training_golds(loaded: LoadedModel, corpus: dict, sampling: dict, seed: int, layer: int, rows: tuple[int, int],
                   max_sites: int | None = None, progress: bool = False, extract=None) -> pa.Table:
    """Sample sites in corpus rows ``[start, stop)`` like the eval sites and extract their golds.

    ``corpus`` and ``sampling`` are the run's ``corpus`` and ``sites`` blocks. Returns a ``GOLD``
    table (site_id numbered from 0 within the training set, layer, activation ``[n, d]``) plus
    ``doc_id`` and ``position``. ``extract`` is the extraction to use (``extract_golds``'s signature; e.g.
    a ``gold.BlockStateCache``'s ``golds``, so a sweep's layers share one forward).
    """
    from causal_kl.gold import extract_golds

    extract = extract or extract_golds

    corpus_rows = load_corpus_rows(corpus, list(rows), source=f"training rows {list(rows)}")
    doc_ids = [doc_id_for(corpus["name"], corpus.get("split", "train"), r) for r, _ in corpus_rows]
    token_ids = tokenize_docs(loaded.tokenizer, [t for _, t in corpus_rows], sampling["max_length"])
    cap = max_sites or sum(len(t) for t in token_ids)
    sample = sample_sites(doc_ids, [r for r, _ in corpus_rows], token_ids, special_token_ids(loaded.tokenizer),
                          seed, sampling["positions_per_doc"], sampling["min_position"], cap, shard_size=cap)
    n = sample.sites.num_rows
    if n == 0:
        raise CausalKLError("config", "train_rows", f"no training site in rows {list(rows)}",
                            "give training rows with documents longer than sites.min_position")
    site_docs = sample.sites.column("doc_id").to_pylist()
    positions = sample.sites.column("position").to_pylist()
    golds = extract(loaded, dict(zip(doc_ids, token_ids)), site_docs, positions, layer, progress=progress)
    return pa.table({
        "site_id": pa.array(np.arange(n), pa.int64()),
        "layer": pa.array([layer] * n, pa.int64()),
        "activation": vectors_to_arrow(golds),
        "doc_id": pa.array(site_docs, pa.string()),
        "position": pa.array(positions, pa.int64()),
    })


def read_training_golds(path: str | Path, eval_doc_ids: set[str] | None = None,
                        d: int | None = None) -> tuple[list[str], np.ndarray]:
    """``(doc_id per row, golds [n, d])`` of a training-gold file, finite and (given ``d``, the eval golds' width) of
    that width; a training document among ``eval_doc_ids`` is an error."""
    table = read_parquet(path, GOLD, d)
    if "doc_id" not in table.column_names:
        raise CausalKLError(path, "doc_id", "training golds without doc ids", "rebuild them with the train_gold rule")
    docs = table.column("doc_id").to_pylist()
    if eval_doc_ids is not None:
        shared = sorted(set(docs) & eval_doc_ids)
        if shared:
            raise CausalKLError(path, "doc_id", f"{len(shared)} training documents are eval documents ({shared[0]}, ...)",
                                "choose train_rows disjoint from corpus.rows")
    golds = arrow_to_vectors(table.column("activation"), path, "activation")
    check_vectors(golds, path, "activation", d)
    return docs, golds
