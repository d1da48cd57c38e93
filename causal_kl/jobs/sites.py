"""Jobs of ``rules/sites.smk``: the run record and NLA stage-0 site sampling."""

from __future__ import annotations

import logging

import pyarrow.compute as pc

from causal_kl.config import run_record as run_record_of
from causal_kl.contracts import DOCS, SITES
from causal_kl.errors import CausalKLError
from causal_kl.io import provenance as provenance_record
from causal_kl.io import write_json, write_parquet
from causal_kl.sites import build_sites, load_tokenizer, shard_table

log = logging.getLogger(__name__)


def run_record(json: str, config: dict) -> None:
    """``results/{run}/run.json``: the resolved config, model, layer, code version and config hash."""
    write_json(json, run_record_of(config))


def sites(corpus_file: list[str], model_dir: list[str], docs: str, sites: str, shards: list[str], stats: str,
          corpus: dict, sampling: dict, seed: int, model: str, provenance: dict) -> None:
    """Corpus rows -> ``docs.parquet``, ``sites.parquet`` and one site file per shard (NLA stage 0)."""
    tokenizer = load_tokenizer(model)
    sample = build_sites(corpus, sampling, seed, tokenizer)
    meta = provenance_record(**provenance)
    write_parquet(docs, sample.docs, DOCS, meta=meta)
    write_parquet(sites, sample.sites, SITES, meta=meta)
    for i, path in enumerate(shards):
        write_parquet(path, shard_table(sample.sites, i), SITES, meta=meta)
    n_shards_needed = int(pc.max(sample.sites["shard"]).as_py()) + 1
    if n_shards_needed > len(shards):
        raise CausalKLError("config", "sites.shard_size",
                            f"{sample.stats['n_sites']} sites need {n_shards_needed} shards, the DAG has {len(shards)}",
                            "keep sites.max_sites / sites.shard_size consistent")
    summary = dict(sample.stats, n_shards=len(shards), empty_shards=len(shards) - n_shards_needed)
    write_json(stats, summary)
    log.info("sites: %d sites in %d documents (%d documents without a candidate position)", summary["n_sites"],
             summary["n_docs"], summary["docs_without_candidates"])
