"""Gold extraction (the activation at each site's point: block L's output, or a hook inside block L) and stored
golds (NLA base.parquet).

Layer convention: "layer L" is the output of decoder block index L, i.e. HF
``output_hidden_states[L + 1]``; a point (L, hook) is a hook inside block L (``causal_kl.hooks``), read where the
family's table puts it. Extraction stops the forward after the deepest block asked for.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import pyarrow as pa
import torch

from causal_kl.errors import CausalKLError
from causal_kl.hooks import RESID_POST, Point
from causal_kl.io import arrow_to_vectors, check_vectors, read_parquet
from causal_kl.models import LoadedModel, at_hook

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
    states = point_states(loaded, input_ids, [Point(int(l)) for l in layers], upto)
    return {p.layer: v for p, v in states.items()}


@torch.no_grad()
def point_states(loaded: LoadedModel, input_ids: Sequence[int], points: Sequence[Point],
                 upto: int | None = None) -> dict[Point, torch.Tensor]:
    """The activation at each point for one document: ``{point: [T, width]}`` (``models.at_hook``: the block's output
    or the module of the block the family's table names); the forward stops right after the deepest block asked for."""
    import contextlib

    points = sorted(set(points), key=lambda p: (p.layer, p.hook))
    for p in points:
        loaded.check_layer(p.layer)
    deepest = max(p.layer for p in points)
    ids = list(input_ids)[: upto if upto is not None else None]
    x = torch.tensor([ids], dtype=torch.long, device=loaded.device)
    captured: dict[Point, torch.Tensor] = {}

    def record(p: Point):
        def fn(a: torch.Tensor) -> None:
            captured[p] = a.detach()[0]
        return fn

    def stop(_a: torch.Tensor) -> None:
        raise _StopForward

    try:
        with contextlib.ExitStack() as stack:
            for p in points:
                stack.enter_context(at_hook(loaded, p.layer, p.hook, record(p)))
            stack.enter_context(at_hook(loaded, deepest, RESID_POST, stop))  # entered last: runs after the recorders
            loaded.model(input_ids=x, use_cache=False)
    except _StopForward:
        pass
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
    """The output of each block in ``layers`` at each (doc_id, position): ``{layer: [n_sites, d] float32}``
    (``extract_states`` at the blocks' outputs)."""
    states = extract_states(loaded, doc_tokens, doc_ids, positions, [Point(int(l)) for l in layers], progress)
    return {p.layer: v for p, v in states.items()}


@torch.no_grad()
def extract_states(loaded: LoadedModel, doc_tokens: dict[str, Sequence[int]], doc_ids: Sequence[str],
                   positions: Sequence[int], points: Sequence[Point], progress: bool = False) -> dict[Point, np.ndarray]:
    """The activation at each point at each (doc_id, position): ``{point: [n_sites, width] float32}``.

    One forward per document, truncated after its last requested position and stopped after the deepest
    block asked for; every shallower block's states are the ones a forward stopped at that block gives
    (the blocks before it compute the same thing either way), so one pass serves every layer of a sweep.
    """
    from tqdm import tqdm

    points = sorted(set(points), key=lambda p: (p.layer, p.hook))
    for p in points:
        loaded.check_layer(p.layer)
        loaded.hook_module(p.layer, p.hook)  # one line when the family has no such hook
    out = {p: np.zeros((len(doc_ids), loaded.hook_width(p.hook)), dtype=np.float32) for p in points}
    by_doc: dict[str, list[int]] = {}
    for i, d in enumerate(doc_ids):
        by_doc.setdefault(d, []).append(i)
    for doc, idx in tqdm(by_doc.items(), desc="gold", unit="doc", disable=not progress):
        pos = [int(positions[i]) for i in idx]
        ids = doc_tokens[doc]
        if max(pos) >= len(ids):
            raise CausalKLError(None, "position", f"position {max(pos)} is past the end of {doc} ({len(ids)} tokens)",
                                "rebuild sites.parquet and docs.parquet together")
        states = point_states(loaded, ids, points, upto=max(pos) + 1)
        for p in points:
            out[p][idx] = states[p][pos].float().cpu().numpy()
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
        self._store: OrderedDict[tuple, dict[Point, np.ndarray]] = OrderedDict()
        self._hooks: set[str] = {RESID_POST}
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
              positions: Sequence[int], layer: int, progress: bool = False, hook: str = RESID_POST) -> np.ndarray:
        """The activation at (``layer``, ``hook``) at each (doc_id, position), ``[n, width]`` float32 (as
        ``extract_states``). A forward to block ``layer`` keeps every shallower block's output, and every hook of
        the points this cache has been asked for at that block."""
        point = Point(int(layer), hook)
        self._hooks.add(hook)
        key = self.key(loaded, doc_tokens, doc_ids, positions)
        entry = self._store.get(key)
        if entry is not None and point in entry:
            self._store.move_to_end(key)
            self.hits += 1
            log.info("%s states of %d positions from the forward of an earlier job", point.saelens_name(), len(positions))
            return entry[point]
        per_layer = len(doc_ids) * loaded.d_model * 4
        keep = [Point(l) for l in range(int(layer) + 1)] if per_layer * (int(layer) + 1) <= self.max_bytes else [Point(int(layer))]
        keep += [Point(int(layer), h) for h in sorted(self._hooks) if h != RESID_POST]
        states = extract_states(loaded, doc_tokens, doc_ids, positions, keep, progress)
        self.forwards += 1
        self._store[key] = states
        while sum(v.nbytes for e in self._store.values() for v in e.values()) > self.max_bytes and len(self._store) > 1:
            self._store.popitem(last=False)
        return states[point]


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
