"""Jobs of ``rules/recon.smk``: training golds, one reconstruction job per route kind, and each route's geometry."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from causal_kl.config import layer_path
from causal_kl.contracts import EXPLANATIONS, GEOMETRY, GOLD
from causal_kl.geometry import check_recheck, geometry_summary, site_geometry
from causal_kl.hooks import parse_point
from causal_kl.io import provenance as provenance_record
from causal_kl.io import read_gold, read_recon, read_sites, vectors_for_sites, write_json, write_parquet
from causal_kl.jobs.gold import load_run_model
from causal_kl.routes import file as file_route
from causal_kl.routes import pca
from causal_kl.routes.base import check_train_rows, write_recon
from causal_kl.routes.training import read_training_golds

log = logging.getLogger(__name__)


def _route_meta(provenance: dict, route: str, entry: dict, **extra) -> dict:
    return provenance_record(**provenance, route=route, kind=entry["kind"], route_config=entry, **extra)


def _eval_golds(sites: str, gold: str) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """The eval sites, their ids and their golds in site order."""
    table = read_sites(sites)
    site_ids = np.asarray(table.column("site_id").to_numpy(), dtype=np.int64)
    gold_ids, vectors = read_gold(gold)
    return table, site_ids, vectors_for_sites(gold_ids, vectors, site_ids, gold,
                                              fix="delete the golds and rerun, so they are extracted for this run's sites")


def train_gold(corpus_file: list[str], model_dir: list[str], gold: str, rows: list[int], corpus: dict, sampling: dict,
               seed: int, model: dict, model_fingerprint: str | None, dtype: str, device: str, layer: str, start: str,
               stop: str, provenance: dict) -> None:
    """Golds of route-training documents (corpus rows ``[start, stop)``), sampled like the eval sites, at the job's
    point (a route at a hook trains on that hook's activations)."""
    import functools

    from causal_kl.jobs.gold import block_states
    from causal_kl.routes.training import training_golds

    point = parse_point(layer)
    loaded = load_run_model(model, dtype, device, with_tokenizer=True, layer=point)
    table = training_golds(loaded, corpus, sampling, seed, point.layer, tuple(rows), progress=True,
                           extract=functools.partial(block_states().golds, hook=point.hook))
    write_parquet(gold, table, GOLD, loaded.hook_width(point.hook),
                  meta=provenance_record(**provenance, train_rows=list(rows), model_fingerprint=model_fingerprint))


def recon_file(vectors: list[str], sites: str, gold: str, recon: str, route_entry: dict, source_fingerprint: list,
               layer: str, route: str, provenance: dict) -> None:
    """A ``file`` route: read, check and write reconstructions computed elsewhere."""
    table, site_ids, golds = _eval_golds(sites, gold)
    route_entry = {**route_entry, "path": layer_path(route_entry["path"], layer)}
    recons = file_route.reconstruct(route_entry, table, golds.shape[1])
    write_recon(recon, site_ids, recons, _route_meta(provenance, route, route_entry, source_file=str(route_entry["path"]),
                                                     source_fingerprint=source_fingerprint))


def recon_pca(train_gold: list[str], sites: str, gold: str, recon: str, route_entry: dict, eval_rows: list[int],
              layer: str, route: str, provenance: dict) -> None:
    """A ``pca`` route: projection onto the top-k principal directions of training golds."""
    source = f"config routes.{route}"
    check_train_rows(route_entry["train_rows"], eval_rows, source)
    table, site_ids, golds = _eval_golds(sites, gold)
    _, train = read_training_golds(train_gold[0], set(table.column("doc_id").to_pylist()), golds.shape[1])
    basis = pca.fit_pca(train, int(route_entry["k"]), bool(route_entry.get("center", True)), source)
    write_recon(recon, site_ids, pca.project(basis, golds),
                _route_meta(provenance, route, route_entry, n_train=len(train),
                            explained_variance_ratio=float(basis.explained_variance_ratio.sum())))


def recon_text_channel(train_gold: list[str], sites: str, gold: str, model_dir: list[str], recon: str, explanations: str,
                       route_entry: dict, eval_rows: list[int], model: dict, model_fingerprint: str | None, dtype: str,
                       device: str, layer: str, route: str, provenance: dict) -> None:
    """A ``text_channel`` route: logit-lens words of each gold, ridge regression from that text back to a vector."""
    check_train_rows(route_entry["train_rows"], eval_rows, f"config routes.{route}")
    table, site_ids, golds = _eval_golds(sites, gold)
    _, train = read_training_golds(train_gold[0], set(table.column("doc_id").to_pylist()), golds.shape[1])
    from causal_kl.routes import text_channel

    loaded = load_run_model(model, dtype, device, with_tokenizer=True, layer=layer)
    top_k = int(route_entry.get("top_k", 8))
    texts, recons, reconstructor = text_channel.reconstruct(loaded, train, golds, top_k,
                                                            float(route_entry.get("ridge_alpha", 1.0)))
    write_parquet(explanations, pa.table({"site_id": pa.array(site_ids, pa.int64()),
                                          "explanation": pa.array(texts, pa.string())}),
                  EXPLANATIONS, meta=_route_meta(provenance, route, route_entry))
    write_recon(recon, site_ids, recons, _route_meta(provenance, route, route_entry, n_train=len(train),
                                                     n_features=len(reconstructor.vocab), top_k=top_k))


def recon_sae(sae: list[str], sites: str, gold: str, gold_in: list[str], recon: str, sparsity: str, route_entry: dict,
              sae_fingerprint: str | None, device: str, layer: str, route: str, provenance: dict) -> None:
    """An ``sae`` route: decode(encode(gold)) in float32, and the SAE's L0 and dead latents on the eval golds. A
    transcoder encodes the golds of its input hook (``gold_in``) and predicts those of the job's point (``gold``: its
    FVE's targets)."""
    from causal_kl.routes import sae as sae_route

    source = f"config routes.{route}"
    _, site_ids, golds = _eval_golds(sites, gold)
    inputs = _eval_golds(sites, gold_in[0])[2] if gold_in else golds
    point = parse_point(layer)
    recons, stats = sae_route.reconstruct({**route_entry, "hook": point.hook}, point.layer, inputs, device, source,
                                          targets=golds)
    # a named SAE (release/id, repo/folder) is shown by its name; sae_revision and sae_file say what was read
    label = stats.get("sae_name") or sae_route.sae_path(route_entry, point.layer)
    write_recon(recon, site_ids, recons, _route_meta(provenance, route, route_entry, sae_path=label,
                                                     sae_fingerprint=sae_fingerprint, sparsity=stats))
    write_json(sparsity, {"route": route, "layer": point.layer, "hook": point.hook, "point": point.name,
                          "sae_path": label, **stats})
    log.info("sae %s at layer %s: L0 %.1f of %d latents, %.1f%% dead on %d golds", route, layer, stats["l0"],
             stats["d_sae"], 100 * stats["dead_share"], len(site_ids))


def explain_nla_av(sites: str, gold: str, checkpoint: list[str], explanations: str, route_entry: dict,
                   checkpoint_fingerprint: str | None, dtype: str, device: str, seed: int, layer: str, route: str,
                   provenance: dict) -> None:
    """An ``nla_av`` route's first step: the AV verbalises every eval gold; its explanations feed ``recon_nla_ar``."""
    from causal_kl.models import evict_models
    from causal_kl.routes import nla_av

    _, site_ids, golds = _eval_golds(sites, gold)
    evict_models()  # the AV is loaded on its own: the run's model does not stay beside it
    av = nla_av.load_av(route_entry["checkpoint"], golds.shape[1], dtype, device)
    raw = nla_av.explain(av, golds, int(route_entry.get("max_new_tokens", 64)), bool(route_entry.get("do_sample", False)),
                         float(route_entry.get("temperature", 1.0)), float(route_entry.get("top_p", 1.0)),
                         int(route_entry["seed"] if route_entry.get("seed") is not None else seed),
                         int(route_entry.get("batch_size", 16)), progress=True)
    table = pa.table({"site_id": pa.array(site_ids, pa.int64()),
                      "explanation": pa.array([nla_av.extract_explanation(t) for t in raw], pa.string()),
                      "generation": pa.array(raw, pa.string())})
    write_parquet(explanations, table, EXPLANATIONS,
                  meta=_route_meta(provenance, route, route_entry, checkpoint=av.checkpoint,
                                   checkpoint_fingerprint=checkpoint_fingerprint,
                                   injection_scale=av.injection_scale,
                                   n_without_tags=sum("<explanation>" not in t for t in raw)))


def recon_nla_ar(explanations: list[str], sites: str, gold: str, checkpoint: list[str], recon: str, route_entry: dict,
                 checkpoint_fingerprint: str | None, explanations_fingerprint: str | None, dtype: str, device: str,
                 layer: str, route: str, provenance: dict) -> None:
    """An ``nla_ar`` route (and an ``nla_av`` route's second step): the AR reconstructs each site from its explanation."""
    from causal_kl.models import evict_models
    from causal_kl.routes import nla_ar

    table, site_ids, golds = _eval_golds(sites, gold)
    explanations = explanations[0]
    texts = nla_ar.explanations_for_sites(explanations, table)
    evict_models()  # the AR is loaded on its own: the run's model does not stay beside it
    path = route_entry["ar_checkpoint"] if route_entry["kind"] == "nla_av" else route_entry["checkpoint"]
    ar = nla_ar.load_ar(path, parse_point(layer).layer, golds.shape[1], dtype, device)
    recons = nla_ar.reconstruct(ar, texts, int(route_entry.get("batch_size", 16)), progress=True)
    write_recon(recon, site_ids, recons, _route_meta(provenance, route, route_entry, checkpoint=ar.checkpoint,
                                                     checkpoint_fingerprint=checkpoint_fingerprint, mse_scale=ar.mse_scale,
                                                     explanations=str(explanations),
                                                     explanations_fingerprint=explanations_fingerprint))


def geometry(recon: str, gold: str, sites: str, table: str, summary: str, route_entry: dict,
             variance_constant: float | None, layer: str, route: str, provenance: dict) -> None:
    """A route's per-site geometry against the golds and its FVE summary (stops on a failed FVE re-check)."""
    from causal_kl.errors import CausalKLError

    _, site_ids, golds = _eval_golds(sites, gold)
    recon_ids, recons = read_recon(recon, golds.shape[1])
    if not np.array_equal(np.sort(recon_ids), np.sort(site_ids)):
        raise CausalKLError(recon, "site_id", "reconstructions do not cover exactly the eval sites",
                            "delete the reconstructions and rerun, so the route is rebuilt for the current sites")
    geo = site_geometry(golds, vectors_for_sites(recon_ids, recons, site_ids, recon))
    geo.insert(0, "site_id", site_ids)
    record = geometry_summary(geo, golds, route, route_entry, variance_constant)
    check_recheck(record, route)
    write_parquet(table, pa.Table.from_pandas(geo, preserve_index=False), GEOMETRY,
                  meta=provenance_record(**provenance, route=route))
    write_json(summary, record)
