"""Gold extraction (the output of block L at each site) and stored golds (NLA base.parquet).

Layer convention: "layer L" is the output of decoder block index L, i.e. HF
``output_hidden_states[L + 1]``. Extraction stops the forward after block L (after the deepest
block asked for, when several layers are extracted at once).
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import pyarrow as pa
import torch

from causal_kl.errors import CausalKLError
from causal_kl.io import arrow_to_vectors, check_vectors, read_parquet
from causal_kl.models import LoadedModel

log = logging.getLogger(__name__)

NLA_BASE_COLUMNS = ("doc_id", "n_raw_tokens", "detokenized_text_truncated", "activation_vector", "activation_layer")


class _StopForward(Exception):
    pass


@torch.no_grad()
def block_output(loaded: LoadedModel, input_ids: Sequence[int], layer: int, upto: int | None = None) -> torch.Tensor:
    """Output of decoder block ``layer`` for one document: ``[T, d]`` (T = ``upto`` or len(input_ids)).

    Runs the model's own forward and stops it right after block ``layer``.
    """
    return block_outputs(loaded, input_ids, [layer], upto)[int(layer)]


@torch.no_grad()
def block_outputs(loaded: LoadedModel, input_ids: Sequence[int], layers: Sequence[int],
                  upto: int | None = None) -> dict[int, torch.Tensor]:
    """Outputs of the decoder blocks ``layers`` for one document: ``{layer: [T, d]}``; the forward stops
    right after the deepest of them."""
    layers = sorted({int(l) for l in layers})
    for l in layers:
        loaded.check_layer(l)
    ids = list(input_ids)[: upto if upto is not None else None]
    x = torch.tensor([ids], dtype=torch.long, device=loaded.device)
    captured: dict[int, torch.Tensor] = {}

    def hook_for(l: int):
        def hook(_mod, _inp, out):
            captured[l] = (out[0] if isinstance(out, tuple) else out).detach()[0]
            if l == layers[-1]:
                raise _StopForward
        return hook

    handles = [loaded.layers[l].register_forward_hook(hook_for(l)) for l in layers]
    try:
        loaded.model(input_ids=x, use_cache=False)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return captured


@torch.no_grad()
def extract_golds(loaded: LoadedModel, doc_tokens: dict[str, Sequence[int]], doc_ids: Sequence[str],
                  positions: Sequence[int], layer: int, progress: bool = False) -> np.ndarray:
    """Block-``layer`` output at each (doc_id, position): ``[n_sites, d]`` float32.

    One forward per document, truncated after its last requested position, stopped after block ``layer``.
    """
    return extract_block_states(loaded, doc_tokens, doc_ids, positions, [layer], progress)[int(layer)]


@torch.no_grad()
def extract_block_states(loaded: LoadedModel, doc_tokens: dict[str, Sequence[int]], doc_ids: Sequence[str],
                         positions: Sequence[int], layers: Sequence[int], progress: bool = False) -> dict[int, np.ndarray]:
    """The output of each block in ``layers`` at each (doc_id, position): ``{layer: [n_sites, d] float32}``.

    One forward per document, truncated after its last requested position and stopped after the deepest
    block asked for; every shallower block's states are the ones a forward stopped at that block gives
    (the blocks before it compute the same thing either way), so one pass serves every layer of a sweep.
    """
    from tqdm import tqdm

    layers = sorted({int(l) for l in layers})
    for l in layers:
        loaded.check_layer(l)
    out = {l: np.zeros((len(doc_ids), loaded.d_model), dtype=np.float32) for l in layers}
    by_doc: dict[str, list[int]] = {}
    for i, d in enumerate(doc_ids):
        by_doc.setdefault(d, []).append(i)
    for doc, idx in tqdm(by_doc.items(), desc="gold", unit="doc", disable=not progress):
        pos = [int(positions[i]) for i in idx]
        ids = doc_tokens[doc]
        if max(pos) >= len(ids):
            raise CausalKLError(None, "position", f"position {max(pos)} is past the end of {doc} ({len(ids)} tokens)",
                                "rebuild sites.parquet and docs.parquet together")
        states = block_outputs(loaded, ids, layers, upto=max(pos) + 1)
        for l in layers:
            out[l][idx] = states[l][pos].float().cpu().numpy()
    return out


class BlockStateCache:
    """Blocks' states at a set of positions, kept by a long-lived process (the model server) across jobs.

    A gold job of layer L (``golds``) runs one forward to block L and keeps the states of **every** block
    0..L at the asked positions; a later job asking for a shallower layer at the same positions (a
    sweep's other layers of the same shard, scheduled after the deepest one) reads them from here. At
    most ``max_bytes`` are kept (least recently used first out); a forward whose states of every block
    would not fit keeps only its own layer.
    """

    def __init__(self, max_bytes: int = 4 << 30):
        from collections import OrderedDict

        self.max_bytes = int(max_bytes)
        self._store: OrderedDict[tuple, dict[int, np.ndarray]] = OrderedDict()
        self.forwards = 0
        self.hits = 0

    @staticmethod
    def key(loaded: LoadedModel, doc_tokens: dict[str, Sequence[int]], doc_ids: Sequence[str],
            positions: Sequence[int]) -> tuple:
        import hashlib

        h = hashlib.blake2b(digest_size=16)
        for doc in dict.fromkeys(doc_ids):
            h.update(doc.encode() + b"\0" + np.asarray(list(doc_tokens[doc]), dtype=np.int64).tobytes())
        h.update("\0".join(doc_ids).encode() + np.asarray(list(positions), dtype=np.int64).tobytes())
        return (id(loaded.model), loaded.path, str(loaded.dtype), str(loaded.device), h.hexdigest())

    def golds(self, loaded: LoadedModel, doc_tokens: dict[str, Sequence[int]], doc_ids: Sequence[str],
              positions: Sequence[int], layer: int, progress: bool = False) -> np.ndarray:
        """Block-``layer`` output at each (doc_id, position), ``[n, d]`` float32 (as ``extract_golds``)."""
        key = self.key(loaded, doc_tokens, doc_ids, positions)
        entry = self._store.get(key)
        if entry is not None and int(layer) in entry:
            self._store.move_to_end(key)
            self.hits += 1
            log.info("block %d states of %d positions from the forward of an earlier job", layer, len(positions))
            return entry[int(layer)]
        per_layer = len(doc_ids) * loaded.d_model * 4
        keep = list(range(int(layer) + 1)) if per_layer * (int(layer) + 1) <= self.max_bytes else [int(layer)]
        states = extract_block_states(loaded, doc_tokens, doc_ids, positions, keep, progress)
        self.forwards += 1
        self._store[key] = states
        while sum(v.nbytes for e in self._store.values() for v in e.values()) > self.max_bytes and len(self._store) > 1:
            self._store.popitem(last=False)
        return states[int(layer)]


def read_nla_base(path: str, sites: pa.Table, layer: int, d: int) -> np.ndarray:
    """Map an NLA ``base.parquet`` onto the run's sites: ``[n_sites, d]`` float32 in site order.

    Rows are matched on ``(doc_id, n_raw_tokens - 1) == (doc_id, position)``; width, layer,
    finiteness and coverage are checked against the run with one-line errors.
    """
    t = read_parquet(path)
    missing = [c for c in ("doc_id", "n_raw_tokens", "activation_vector") if c not in t.column_names]
    if missing:
        raise CausalKLError(path, missing[0], f"column missing from NLA base.parquet (has {t.column_names})",
                            f"an NLA base.parquet has the columns {list(NLA_BASE_COLUMNS)}")
    if "activation_layer" in t.column_names:
        layers = set(t["activation_layer"].to_pylist())
        if layers != {layer}:
            raise CausalKLError(path, "activation_layer", f"stored golds are from layer(s) {sorted(layers)}, the run patches layer {layer}",
                                "set model.layer to the stored golds' layer, or use a base.parquet extracted at this layer")
    vec = arrow_to_vectors(t["activation_vector"], path, "activation_vector")
    check_vectors(vec, path, "activation_vector", d)
    key = {(doc, int(n) - 1): i for i, (doc, n) in enumerate(zip(t["doc_id"].to_pylist(), t["n_raw_tokens"].to_pylist()))}
    site_docs = sites["doc_id"].to_pylist()
    site_pos = sites["position"].to_pylist()
    idx = []
    for doc, p in zip(site_docs, site_pos):
        i = key.get((doc, int(p)))
        if i is None:
            known = sorted({k[0] for k in key})[:3]
            raise CausalKLError(path, "doc_id/n_raw_tokens",
                                f"no stored gold for site ({doc}, position {p}); the file has doc ids like {known}",
                                "use the base.parquet of the same corpus, rows, seed and tokenizer as this run (doc_id = corpus:split:row, n_raw_tokens = position + 1)")
        idx.append(i)
    return vec[np.asarray(idx, dtype=np.int64)]


def nla_base_table(sites: pa.Table, doc_tokens: dict[str, Sequence[int]], vectors: np.ndarray, layer: int,
                   tokenizer=None, round_trip: str | None = "bfloat16") -> pa.Table:
    """Write golds in NLA's base.parquet format (the demo exercises the stored-gold path with it).

    ``round_trip`` stores the vectors through that dtype, as golds extracted on another box in
    bf16 would be: the gold-repatch floor then measures a real harness difference.
    """
    from causal_kl.io import vectors_to_arrow

    v = torch.from_numpy(np.asarray(vectors, dtype=np.float32))
    if round_trip:
        v = v.to(getattr(torch, round_trip)).float()
    docs = sites["doc_id"].to_pylist()
    pos = sites["position"].to_pylist()
    texts = []
    for doc, p in zip(docs, pos):
        ids = list(doc_tokens[doc])[: int(p) + 1]
        texts.append(tokenizer.decode(ids) if tokenizer is not None else "")
    return pa.table({
        "doc_id": pa.array(docs, pa.string()),
        "n_raw_tokens": pa.array([int(p) + 1 for p in pos], pa.int64()),
        "detokenized_text_truncated": pa.array(texts, pa.string()),
        "activation_vector": vectors_to_arrow(v.numpy()),
        "activation_layer": pa.array([layer] * len(docs), pa.int64()),
    })


def reextract_cos(stored: np.ndarray, extracted: np.ndarray) -> np.ndarray:
    """Per-site cosine of stored vs re-extracted golds (float64)."""
    a = stored.astype(np.float64)
    b = extracted.astype(np.float64)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 0, num / np.maximum(den, 1e-300), 0.0)


def reextract_summary(cos: np.ndarray, threshold: float) -> dict:
    worst = int(np.argmin(cos)) if len(cos) else -1
    return {
        "n": int(len(cos)),
        "min_cos": float(cos.min()) if len(cos) else None,
        "median_cos": float(np.median(cos)) if len(cos) else None,
        "worst_row": worst,
        "threshold": float(threshold),
        "passed": bool(len(cos) and cos.min() >= threshold),
    }
