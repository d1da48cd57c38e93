"""Jobs of ``rules/gold.smk``: gold extraction per shard, its aggregate, stored golds and the re-extract check."""

from __future__ import annotations

import logging
import time

import numpy as np
import pyarrow as pa

from causal_kl.contracts import GOLD, REEXTRACT
from causal_kl.errors import CausalKLError
from causal_kl.io import provenance as provenance_record
from causal_kl.io import (concat_parquet, parquet_rows, parquet_schema, read_docs, read_gold, read_sites,
                          write_json, write_parquet)
from causal_kl.hooks import RESID_POST, Point, parse_point
from causal_kl.sites import load_tokenizer

log = logging.getLogger(__name__)


def load_run_model(model: dict, dtype: str, device: str, with_tokenizer: bool = False,
                   layer: "int | str | Point | None" = None):
    """The run's model (``model``: the config's model block), checked against the job's ``layer`` (a layer, or a
    point: its layer, and its hook against the model's family).

    Through ``get_model``: in the model server the model is loaded once and serves every job.
    """
    from causal_kl.models import get_model

    loaded = get_model(model["path"], dtype, device, model.get("attn_implementation", "auto"), with_tokenizer)
    if layer is not None:
        point = parse_point(layer)
        loaded.check_layer(point.layer)
        if point.hook != RESID_POST:
            loaded.hook_module(point.layer, point.hook)  # one line when the model's blocks have no such hook
    log.info("loaded %s (%s, %d blocks, d=%d) on %s in %s", model["path"], loaded.architecture, loaded.n_layers,
             loaded.d_model, loaded.device, loaded.dtype)
    return loaded


def preload_model(model: dict, dtype: str, device: str) -> None:
    """Load the run's model (and its tokenizer) into the model server before the first model job asks for it
    (``preload_plan``): the job then reuses the resident copy."""
    load_run_model(model, dtype, device, with_tokenizer=True)


def preload_plan(planned_rules: set[str], planned_outputs: list[str], model_path: str) -> bool:
    """Whether a local run should load its model while the jobs before the first model job run: some planned job
    loads the run's model, and no planned job writes it (the demo's model is made by the run itself)."""
    import os

    from causal_kl.model_rules import LM, MODEL_RULES

    if not any(r in MODEL_RULES and MODEL_RULES[r].loads == LM for r in planned_rules):
        return False
    model = os.path.normpath(str(model_path))
    return not any(o == model or o.startswith(model + os.sep) for o in map(os.path.normpath, planned_outputs))


def _gold_table(site_ids, layer: int, vectors: np.ndarray) -> dict:
    """A GOLD table (``layer``: the point's block; its hook is in the provenance)."""
    return {"site_id": site_ids, "layer": pa.array([layer] * len(vectors), pa.int64()), "activation": vectors}


_BLOCK_STATES = None
"""This process's ``gold.BlockStateCache``: in the model server it outlives a job, so the gold jobs of a
sweep's layers for one shard (the deepest first) share one forward."""


def block_states():
    global _BLOCK_STATES
    if _BLOCK_STATES is None:
        from causal_kl.gold import BlockStateCache

        _BLOCK_STATES = BlockStateCache()
    return _BLOCK_STATES


def gold(sites: str, docs: str, model_dir: list[str], gold: str, model: dict, model_fingerprint: str | None, dtype: str,
         device: str, layer: str, shard: str, provenance: dict) -> None:
    """The activation at the job's point (block L's output, or a hook inside block L) at each site of one shard."""
    table = read_sites(sites)
    point = parse_point(layer)
    layer = point.layer
    meta = provenance_record(**provenance, dtype=dtype, model_fingerprint=model_fingerprint)
    if table.num_rows == 0:
        write_parquet(gold, {"site_id": pa.array([], pa.int64()), "layer": pa.array([], pa.int64()),
                             "activation": pa.array([], pa.list_(pa.float32(), 1))}, meta=meta)
        return
    loaded = load_run_model(model, dtype, device, layer=point)
    t0 = time.time()
    vec = block_states().golds(loaded, read_docs(docs), table["doc_id"].to_pylist(), table["position"].to_pylist(), layer,
                               progress=True, hook=point.hook)
    log.info("gold at %s: %d sites in %.1f s", point.saelens_name(), len(vec), time.time() - t0)
    write_parquet(gold, _gold_table(table["site_id"], layer, vec), GOLD, loaded.hook_width(point.hook), meta=meta)


def gold_aggregate(shards: list[str], gold: str, layer: str, provenance: dict) -> None:
    """Every gold shard -> ``gold.parquet``, streamed a row group at a time (empty shards, whose width is unknown, are
    left out)."""
    schemas = {p: parquet_schema(p, GOLD) for p in shards}
    widths = {p: sch.field("activation").type.list_size for p, sch in schemas.items() if parquet_rows(p)}
    d = max(widths.values()) if widths else 1
    concat_parquet(list(widths), gold, GOLD, d, meta=provenance_record(**provenance))


def demo_base(gold: str, sites: str, docs: str, model_dir: list[str], base: str, model: str, layer: str,
              provenance: dict) -> None:
    """Write the extracted golds as an NLA base.parquet (through bf16), so the demo exercises stored golds."""
    from causal_kl.gold import nla_base_table

    table = read_sites(sites)
    ids, vec = read_gold(gold)
    if not np.array_equal(ids, table["site_id"].to_numpy()):
        raise CausalKLError(gold, "site_id", "gold sites do not match sites.parquet", "delete gold.parquet and rerun")
    base_table = nla_base_table(table, read_docs(docs), vec, parse_point(layer).layer, load_tokenizer(model))
    write_parquet(base, base_table, meta=provenance_record(**provenance))


def stored_gold(base: str, sites: str, gold: str, stored: str, reextract: str, summary: str, min_cos: float,
                stored_fingerprint: str | None, layer: str, provenance: dict) -> None:
    """Map the NLA base.parquet onto the sites, check it against the re-extracted golds, keep it as the stored golds."""
    from causal_kl.gold import read_nla_base, reextract_cos, reextract_summary

    table = read_sites(sites)
    layer = parse_point(layer).layer  # (a resid_post point: stored golds are the residual stream)
    ids, extracted = read_gold(gold)
    vectors = read_nla_base(base, table, layer, extracted.shape[1])
    cos = reextract_cos(vectors, extracted)
    record = reextract_summary(cos, min_cos)
    record["site_id_worst"] = int(ids[record["worst_row"]]) if len(ids) else None
    record["stored"] = str(base)
    meta = provenance_record(**provenance, stored=str(base), stored_fingerprint=stored_fingerprint)
    write_parquet(reextract, {"site_id": ids, "cos": cos}, REEXTRACT, meta=meta)
    write_json(summary, record)
    if not record["passed"]:
        raise CausalKLError(base, "activation_vector",
                            f"re-extract check failed: min cos(stored, re-extracted) = {record['min_cos']:.6f} < {min_cos} "
                            f"(site {record['site_id_worst']}); see {reextract}",
                            "check that the stored golds come from the same model, layer, corpus rows and tokenizer (or lower gold.min_cos)")
    log.info("re-extract check: min cos %.6f >= %s over %d sites", record["min_cos"], min_cos, record["n"])
    write_parquet(stored, _gold_table(ids, layer, vectors), GOLD, vectors.shape[1], meta=meta)
