"""Jobs of ``rules/sites.smk``: the run record and NLA stage-0 site sampling."""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow.compute as pc

from causal_kl.config import run_record as run_record_of
from causal_kl.contracts import DOCS, SITES
from causal_kl.io import provenance as provenance_record
from causal_kl.io import write_json, write_parquet
from causal_kl.sites import build_sites, load_tokenizer, shard_table

log = logging.getLogger(__name__)


def run_record(json: str, config: dict) -> None:
    """``results/{run}/run.json``: the resolved config, model, layer, code version and config hash."""
    write_json(json, run_record_of(config))


def sites(corpus_file: list[str], model_dir: list[str], docs: str, sites: str, shards: str, stats: str,
          corpus: dict, corpus_fingerprint: str | None, sampling: dict, seed: int, model: str, provenance: dict) -> None:
    """Corpus rows -> ``docs.parquet``, ``sites.parquet`` and one site file per shard that holds sites (NLA stage 0)."""
    tokenizer = load_tokenizer(model)
    sample = build_sites(corpus, sampling, seed, tokenizer)
    meta = provenance_record(**provenance, corpus_fingerprint=corpus_fingerprint)
    write_parquet(docs, sample.docs, DOCS, meta=meta)
    write_parquet(sites, sample.sites, SITES, meta=meta)
    n_shards = int(pc.max(sample.sites["shard"]).as_py()) + 1
    for i in range(n_shards):
        write_parquet(Path(shards) / f"shard_{i:03d}.parquet", shard_table(sample.sites, i), SITES, meta=meta)
    summary = dict(sample.stats, n_shards=n_shards, max_sites=sampling["max_sites"], shard_size=sampling["shard_size"])
    if summary["n_sites"] < sampling["max_sites"]:
        summary["warning"] = (f"sites.max_sites is {sampling['max_sites']} but corpus rows {list(corpus['rows'])} yield "
                              f"{summary['n_sites']} sites: the run has {n_shards} shards, not "
                              f"{-(-sampling['max_sites'] // sampling['shard_size'])}")
        log.warning("%s (set sites.max_sites to %d, or widen corpus.rows)", summary["warning"], summary["n_sites"])
    write_json(stats, summary)
    log.info("sites: %d sites in %d documents, %d shards (%d documents without a candidate position)",
             summary["n_sites"], summary["n_docs"], n_shards, summary["docs_without_candidates"])
