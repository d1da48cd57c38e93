"""One function per pipeline rule of the foundation and patch stages.

The workflow scripts only unpack ``snakemake.input/output/params`` and call these; all
reading, checking and writing lives here, so each stage runs and is tested without Snakemake.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from causal_kl import FLOOR_CONDITIONS, ROUTE_CONDITIONS
from causal_kl.conditions import eval_mean, floor_vectors, resample_choices, route_vectors
from causal_kl.config import config_hash, run_record
from causal_kl.contracts import CONDITION_CHOICES, DOCS, GOLD, PATCH, RECON, REEXTRACT, SITES
from causal_kl.errors import CausalKLError
from causal_kl.gold import (check_vectors, extract_golds, nla_base_table, read_gold, read_nla_base,
                            reextract_cos, reextract_summary)
from causal_kl.io import arrow_to_vectors, concat_parquet, provenance, read_parquet, write_json, write_parquet
from causal_kl.models import LoadedModel, load_model
from causal_kl.patching import SiteVariants, patch_document, results_table
from causal_kl.sites import build_sites, shard_table

log = logging.getLogger(__name__)


def _meta(config: dict, **extra) -> dict:
    return provenance(config_hash(config), config["model"]["path"], run=config["run"], layer=config["model"]["layer"], **extra)


def load_run_model(config: dict, with_tokenizer: bool = True) -> LoadedModel:
    m = config["model"]
    loaded = load_model(m["path"], config["dtype"], config["device"], m.get("attn_implementation", "sdpa"), with_tokenizer)
    loaded.check_layer(m["layer"])
    log.info("loaded %s (%s, %d blocks, d=%d) on %s in %s", m["path"], loaded.architecture, loaded.n_layers,
             loaded.d_model, loaded.device, loaded.dtype)
    return loaded


def load_tokenizer(config: dict):
    from transformers import AutoTokenizer

    path = config["model"]["path"]
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise CausalKLError(path, "tokenizer", f"cannot load the tokenizer ({str(e).splitlines()[0]})",
                            "point model.path at a folder with tokenizer files, or a hub id with network access") from e


def stage_run_record(config: dict, out: str) -> None:
    write_json(out, run_record(config))


# ----------------------------------------------------------------------------- sites
def stage_sites(config: dict, docs_out: str, sites_out: str, shard_outs: Sequence[str], stats_out: str) -> None:
    tokenizer = load_tokenizer(config)
    sample = build_sites(config, tokenizer)
    meta = _meta(config, stage="sites")
    write_parquet(docs_out, sample.docs, DOCS, meta=meta)
    write_parquet(sites_out, sample.sites, SITES, meta=meta)
    for i, path in enumerate(shard_outs):
        write_parquet(path, shard_table(sample.sites, i), SITES, meta=meta)
    n_shards_needed = int(pc.max(sample.sites["shard"]).as_py()) + 1
    if n_shards_needed > len(shard_outs):
        raise CausalKLError("config", "sites.shard_size", f"{sample.stats['n_sites']} sites need {n_shards_needed} shards, the DAG has {len(shard_outs)}",
                            "keep sites.max_sites / sites.shard_size consistent")
    stats = dict(sample.stats, n_shards=len(shard_outs), empty_shards=len(shard_outs) - n_shards_needed)
    write_json(stats_out, stats)
    log.info("sites: %d sites in %d documents (%d documents without a candidate position)", stats["n_sites"],
             stats["n_docs"], stats["docs_without_candidates"])


def read_docs(path: str) -> dict[str, list[int]]:
    t = read_parquet(path, DOCS)
    return {d: list(ids) for d, ids in zip(t["doc_id"].to_pylist(), t["input_ids"].to_pylist())}


# ----------------------------------------------------------------------------- gold
def stage_gold_shard(config: dict, sites_path: str, docs_path: str, out: str) -> None:
    sites = read_parquet(sites_path, SITES)
    layer = config["model"]["layer"]
    if sites.num_rows == 0:
        write_parquet(out, {"site_id": pa.array([], pa.int64()), "layer": pa.array([], pa.int64()),
                            "activation": pa.array([], pa.list_(pa.float32(), 1))}, meta=_meta(config, stage="gold"))
        return
    loaded = load_run_model(config, with_tokenizer=False)
    docs = read_docs(docs_path)
    t0 = time.time()
    vec = extract_golds(loaded, docs, sites["doc_id"].to_pylist(), sites["position"].to_pylist(), layer, progress=True)
    log.info("gold: %d sites in %.1f s", len(vec), time.time() - t0)
    write_parquet(out, {"site_id": sites["site_id"], "layer": pa.array([layer] * len(vec), pa.int64()), "activation": vec},
                  GOLD, loaded.d_model, meta=_meta(config, stage="gold", dtype=config["dtype"]))


def stage_concat(config: dict, inputs: Sequence[str], out: str, contract_name: str) -> None:
    from causal_kl.contracts import ALL

    contract = ALL[contract_name]
    tables = [read_parquet(p, contract) for p in inputs]
    tables = [t for t in tables if t.num_rows]
    if contract is GOLD:
        d = max(t.schema.field("activation").type.list_size for t in tables)
        merged = pa.concat_tables([t.replace_schema_metadata(None) for t in tables])
        write_parquet(out, merged, GOLD, d, meta=_meta(config, stage="gold"))
    else:
        concat_parquet(inputs, out, contract, meta=_meta(config, stage=contract_name))


def stage_demo_base(config: dict, gold_path: str, sites_path: str, docs_path: str, out: str) -> None:
    """Write the extracted golds as an NLA base.parquet (through bf16), so the demo exercises stored golds."""
    sites = read_parquet(sites_path, SITES)
    ids, vec = read_gold(gold_path)
    if not np.array_equal(ids, sites["site_id"].to_numpy()):
        raise CausalKLError(gold_path, "site_id", "gold sites do not match sites.parquet", "rebuild gold.parquet")
    table = nla_base_table(sites, read_docs(docs_path), vec, config["model"]["layer"], load_tokenizer(config))
    write_parquet(out, table, meta=_meta(config, stage="demo_base"))


def stage_stored_gold(config: dict, base_path: str, sites_path: str, gold_path: str, out: str, reextract_out: str,
                      summary_out: str) -> None:
    """Map the NLA base.parquet onto the sites, check it against the re-extracted golds, keep it as the stored golds."""
    sites = read_parquet(sites_path, SITES)
    ids, extracted = read_gold(gold_path)
    stored = read_nla_base(base_path, sites, config["model"]["layer"], extracted.shape[1])
    cos = reextract_cos(stored, extracted)
    thr = config["gold"]["min_cos"]
    summary = reextract_summary(cos, thr)
    summary["site_id_worst"] = int(ids[summary["worst_row"]]) if len(ids) else None
    summary["stored"] = str(base_path)
    meta = _meta(config, stage="reextract", stored=str(base_path))
    write_parquet(reextract_out, {"site_id": ids, "cos": cos}, REEXTRACT, meta=meta)
    write_json(summary_out, summary)
    if not summary["passed"]:
        raise CausalKLError(base_path, "activation_vector",
                            f"re-extract check failed: min cos(stored, re-extracted) = {summary['min_cos']:.6f} < {thr} (site {summary['site_id_worst']}); see {reextract_out}",
                            "check that the stored golds come from the same model, layer, corpus rows and tokenizer (or lower gold.min_cos)")
    log.info("re-extract check: min cos %.6f >= %s over %d sites", summary["min_cos"], thr, summary["n"])
    write_parquet(out, {"site_id": ids, "layer": pa.array([config["model"]["layer"]] * len(ids), pa.int64()), "activation": stored},
                  GOLD, stored.shape[1], meta=meta)


# ----------------------------------------------------------------------------- conditions
def stage_conditions(config: dict, gold_path: str, sites_path: str, choices_out: str, mean_out: str, noise_out: str) -> None:
    from causal_kl.conditions import noise_directions

    sites = read_parquet(sites_path, SITES)
    ids, gold = read_gold(gold_path)
    if not np.array_equal(ids, sites["site_id"].to_numpy()):
        raise CausalKLError(gold_path, "site_id", "the golds' site ids do not match sites.parquet", "rebuild the golds for this run's sites")
    meta = _meta(config, stage="conditions", seed=config["seed"])
    choices = resample_choices(ids.tolist(), sites["doc_id"].to_pylist(), config["seed"])
    write_parquet(choices_out, choices, CONDITION_CHOICES, meta=meta)
    write_parquet(mean_out, {"mean": eval_mean(gold)[None].astype(np.float32), "n": pa.array([len(ids)], pa.int64())}, meta=meta)
    u = noise_directions(ids.tolist(), gold.shape[1], config["seed"]).astype(np.float32)
    write_parquet(noise_out, {"site_id": ids, "direction": u}, meta=meta)
    n_no_sib = int((choices["same_doc_source"].to_numpy() < 0).sum())
    log.info("conditions: %d sites, %d without a same-document sibling (excluded from resample_same_doc)", len(ids), n_no_sib)


def _by_site(ids: np.ndarray, vec: np.ndarray, want: np.ndarray, path: str) -> np.ndarray:
    index = {int(s): i for i, s in enumerate(ids)}
    missing = [int(s) for s in want if int(s) not in index]
    if missing:
        raise CausalKLError(path, "site_id", f"{len(missing)} sites missing (first: {missing[:5]})", "produce a vector for every site of the run")
    return vec[[index[int(s)] for s in want]]


def _patch_shard(config: dict, loaded: LoadedModel, sites: pa.Table, docs: dict[str, list[int]],
                 variants: dict[str, tuple[np.ndarray, np.ndarray]], route: str, include_clean: bool) -> pa.Table:
    from tqdm import tqdm

    layer = config["model"]["layer"]
    by_doc: dict[str, list[int]] = {}
    for i, d in enumerate(sites["doc_id"].to_pylist()):
        by_doc.setdefault(d, []).append(i)
    site_ids = sites["site_id"].to_pylist()
    positions = sites["position"].to_pylist()
    names = list(variants)
    results = []
    bar = tqdm(total=len(site_ids), desc=f"patch {route or 'floors'}", unit="site")
    for k, (doc, rows) in enumerate(by_doc.items()):
        sv = []
        for i in rows:
            keep = [n for n in names if variants[n][1][i]]
            vec = torch.from_numpy(np.stack([variants[n][0][i] for n in keep]))
            sv.append(SiteVariants(site_ids[i], positions[i], keep, vec))
        results += patch_document(loaded, docs[doc], layer, sv, config["patch"]["method"], config["patch"]["sites_per_batch"], doc)
        bar.update(len(rows))
        log.info("patch %s: document %d/%d done (%s, %d sites)", route or "floors", k + 1, len(by_doc), doc, len(rows))
    bar.close()
    return results_table(results, route, include_clean)


def _shard_inputs(config: dict, sites_path: str, docs_path: str, gold_path: str):
    """The shard's sites, its documents' tokens, every gold of the run and the shard's own golds."""
    sites = read_parquet(sites_path, SITES)
    ids, gold = read_gold(gold_path)
    want = sites["site_id"].to_numpy()
    return sites, read_docs(docs_path), (ids, gold), _by_site(ids, gold, want, gold_path), want


def stage_patch_floors(config: dict, sites_path: str, docs_path: str, gold_path: str, choices_path: str, mean_path: str, out: str) -> None:
    sites = read_parquet(sites_path, SITES)
    meta = _meta(config, stage="patch_floors", method=config["patch"]["method"])
    if sites.num_rows == 0:
        write_parquet(out, PATCH.schema().empty_table(), PATCH, meta=meta)
        return
    sites, docs, (all_ids, all_gold), _, want = _shard_inputs(config, sites_path, docs_path, gold_path)
    choices = read_parquet(choices_path, CONDITION_CHOICES)
    mean = arrow_to_vectors(read_parquet(mean_path)["mean"], mean_path, "mean")[0]
    fv = floor_vectors(all_gold, all_ids.tolist(), choices, mean)
    rows = [int(np.nonzero(all_ids == s)[0][0]) for s in want]
    variants = {c: (fv[c][0][rows], fv[c][1][rows]) for c in FLOOR_CONDITIONS}
    loaded = load_run_model(config, with_tokenizer=False)
    t0 = time.time()
    table = _patch_shard(config, loaded, sites, docs, variants, "", include_clean=True)
    log.info("floors: %d sites in %.1f s", sites.num_rows, time.time() - t0)
    write_parquet(out, table, PATCH, meta=meta)


def read_recon(path: str, d: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    t = read_parquet(path, RECON, d)
    vec = arrow_to_vectors(t["reconstruction"], path, "reconstruction")
    check_vectors(vec, path, "reconstruction", d)
    return t["site_id"].to_numpy(), vec


def stage_patch_route(config: dict, route: str, sites_path: str, docs_path: str, gold_path: str, recon_path: str,
                      noise_path: str, out: str) -> None:
    sites = read_parquet(sites_path, SITES)
    meta = _meta(config, stage="patch_route", route=route, method=config["patch"]["method"])
    if sites.num_rows == 0:
        write_parquet(out, PATCH.schema().empty_table(), PATCH, meta=meta)
        return
    sites, docs, _, gold, want = _shard_inputs(config, sites_path, docs_path, gold_path)
    rid, rvec = read_recon(recon_path, gold.shape[1])
    recon = _by_site(rid, rvec, want, recon_path)
    nt = read_parquet(noise_path)
    u = _by_site(nt["site_id"].to_numpy(), arrow_to_vectors(nt["direction"], noise_path, "direction"), want, noise_path)
    rv = route_vectors(gold, recon, want.tolist(), config["seed"], directions=u)
    ones = np.ones(len(want), dtype=bool)
    variants = {c: (rv[c], ones) for c in ROUTE_CONDITIONS}
    loaded = load_run_model(config, with_tokenizer=False)
    t0 = time.time()
    table = _patch_shard(config, loaded, sites, docs, variants, route, include_clean=False)
    log.info("route %s: %d sites in %.1f s", route, sites.num_rows, time.time() - t0)
    write_parquet(out, table, PATCH, meta=meta)


def stage_patch_aggregate(config: dict, inputs: Sequence[str], out: str) -> None:
    concat_parquet(list(inputs), out, PATCH, meta=_meta(config, stage="patch"))
