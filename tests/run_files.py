"""Small run files (sites, golds, training golds) written straight from arrays, for route and geometry tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from causal_kl.contracts import GOLD, SITES
from causal_kl.io import vectors_to_arrow, write_parquet


def write_sites(path: Path, doc_ids: list[str], positions: list[int]) -> pa.Table:
    n = len(doc_ids)
    table = pa.table({
        "site_id": pa.array(range(n), pa.int64()),
        "doc_id": pa.array(doc_ids, pa.string()),
        "position": pa.array(positions, pa.int64()),
        "token_id": pa.array([5] * n, pa.int64()),
        "token": pa.array(["x"] * n, pa.string()),
        "next_token_id": pa.array([6] * n, pa.int64()),
        "shard": pa.array([0] * n, pa.int64()),
    })
    write_parquet(path, table, SITES)
    return table


def write_gold(path: Path, vectors: np.ndarray, layer: int = 2, site_ids=None, doc_ids=None) -> None:
    n, d = vectors.shape
    cols = {
        "site_id": pa.array(range(n) if site_ids is None else site_ids, pa.int64()),
        "layer": pa.array([layer] * n, pa.int64()),
        "activation": vectors_to_arrow(vectors),
    }
    if doc_ids is not None:
        cols["doc_id"] = pa.array(doc_ids, pa.string())
    write_parquet(path, pa.table(cols), GOLD, d)


def make_run(tmp: Path, n_docs: int = 6, per_doc: int = 5, d: int = 16, seed: int = 0, corpus: str = "c:train"):
    """Eval sites (``n_docs`` x ``per_doc``) and correlated golds; returns (sites_path, gold_path, sites, gold)."""
    rng = np.random.default_rng(seed)
    doc_ids = [f"{corpus}:{i // per_doc}" for i in range(n_docs * per_doc)]
    positions = [50 + 3 * (i % per_doc) for i in range(n_docs * per_doc)]
    sites = write_sites(tmp / "sites.parquet", doc_ids, positions)
    mean = rng.standard_normal(d) * 3
    gold = (mean + rng.standard_normal((len(doc_ids), d))).astype(np.float32)
    write_gold(tmp / "gold.parquet", gold)
    return tmp / "sites.parquet", tmp / "gold.parquet", sites, gold


def base_config(tmp: Path, routes: dict, model_path: str = "m", layer: int = 2) -> dict:
    from causal_kl.config import validate_config

    cfg = {"run": "t", "corpus": {"name": "c", "column": "content", "rows": [0, 6]},
           "model": {"path": model_path, "layer": layer}, "routes": routes, "device": "cpu"}
    return validate_config(cfg)


PROVENANCE = {"config_hash": "test", "run": "t", "model": "m", "layer": 2, "rule": "test"}
"""The provenance record a job gets from run_rule, for calling job functions directly."""


def pca_job(tmp: Path, route: dict, train_docs, layer: int = 3) -> tuple[dict, np.ndarray, np.ndarray]:
    """The recon_pca rule's job on fixture files, as keyword arguments (80 training golds whose doc ids are
    ``train_docs(80)``); with the golds and the training golds."""
    sites_path, gold_path, _, gold = make_run(tmp, d=20)
    rng = np.random.default_rng(9)
    train = (rng.standard_normal((80, 20)) @ rng.standard_normal((20, 20)) + 2.0).astype(np.float32)
    write_gold(tmp / "train.parquet", train, doc_ids=train_docs(80))
    config = base_config(tmp, {"p": route})
    job = dict(train_gold=[str(tmp / "train.parquet")], sites=str(sites_path), gold=str(gold_path),
               recon=str(tmp / "recon.parquet"), route_entry=config["routes"]["p"],
               eval_rows=config["corpus"]["rows"], layer=str(layer), route="p", provenance=PROVENANCE)
    return job, gold, train
