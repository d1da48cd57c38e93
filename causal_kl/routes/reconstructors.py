"""Reconstruct any vector: a route's reconstruction at positions other than the eval sites.

Two consumers need it: spans (positions ``p+1 .. p+k-1`` of a site) and the SAELens-comparable
scores (every position of whole contexts). ``build_reconstructor`` turns a route entry into a
``Reconstructor``, a callable ``[n, d] -> [n, d]`` float32, fitted or loaded the way the route's
own recon job does it, so that on the eval golds it gives what that job wrote:

| kind | reconstructs a vector by | other positions |
|---|---|---|
| ``pca`` | ``pca.project`` onto the basis ``recon_pca`` fits (training golds, ``k``, ``center``) | any vector |
| ``text_channel`` | ``predict(verbalise(v))`` with the reconstructor ``text_channel.reconstruct`` fits | any vector (needs the run's model) |
| ``sae`` | ``decode(encode(v))`` (``routes.sae``) | any vector |
| ``file`` | lookup by ``(doc_id, position)`` | only a parquet keyed by ``doc_id`` + ``position`` (or NLA's ``n_raw_tokens`` = position + 1) |
| ``nla_ar`` | the AR on the explanation of ``(doc_id, position)`` | only an explanations file keyed the same way |
| ``nla_av`` | - | no: one AV generation per position (``reason`` says what to do instead) |

A lookup route (``needs_where``) ignores the vectors' values: it needs the ``(doc_id, position)``
of each one (``where``) and returns what its file holds there; ``missing(where)`` lists positions
it has nothing for. A route that cannot reconstruct other positions has ``available`` false and a
``reason``; calling it raises that reason as a ``CausalKLError``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from causal_kl.errors import CausalKLError
from causal_kl.io import preview
from causal_kl.paths import RUN_DIR, TEMPLATES

Where = Sequence[tuple[str, int]]

KEYED_FIX = ("key the file's rows by doc_id + position (or NLA's doc_id + n_raw_tokens = position + 1) and give a row "
             "for every position to reconstruct")


@dataclass
class Reconstructor:
    """A route's reconstruction of arbitrary vectors (see the module docstring)."""

    kind: str
    reason: str | None = None  # why this route cannot reconstruct other positions (None: it can)
    needs_where: bool = False  # a lookup route (file, nla_ar): needs the (doc_id, position) of each vector
    route: str = ""
    d_model: int | None = None
    fix: str | None = None  # with ``reason``: what to do instead
    info: dict[str, Any] = field(default_factory=dict)  # what was fitted or read (n_train, file, ...)
    fn: Callable[[np.ndarray, list[tuple[str, int]] | None], np.ndarray] | None = field(default=None, repr=False)
    keys: frozenset | None = field(default=None, repr=False)  # lookup routes: the (doc_id, position) they hold

    @property
    def available(self) -> bool:
        return self.reason is None

    def missing(self, where: Where) -> list[tuple[str, int]]:
        """Positions of ``where`` a lookup route has no vector / explanation for (``[]`` for other routes)."""
        if self.keys is None:
            return []
        return [w for w in _positions(where) if w not in self.keys]

    def __call__(self, vectors: np.ndarray, where: Where | None = None) -> np.ndarray:
        """Reconstructions ``[n, d]`` float32 of ``vectors [n, d]`` (at the positions ``where`` for a lookup route)."""
        source = f"config routes.{self.route}" if self.route else "config routes"
        if self.reason is not None:
            raise CausalKLError(source, "kind", self.reason, self.fix or "use another route")
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or (self.d_model and vectors.shape[1] != self.d_model):
            raise ValueError(f"expected vectors [n, {self.d_model}], got {vectors.shape}")
        pos = None
        if self.needs_where:
            if where is None:
                raise ValueError(f"a {self.kind} route looks vectors up by position: pass where=[(doc_id, position), ...]")
            pos = _positions(where)
            if len(pos) != len(vectors):
                raise ValueError(f"{len(vectors)} vectors but {len(pos)} positions in where")
            absent = self.missing(pos)
            if absent:
                raise CausalKLError(self.info.get("file", source), "doc_id+position",
                                    f"{len(absent)} of {len(pos)} positions have no row ({preview(absent)})", KEYED_FIX)
        if len(vectors) == 0:
            return np.zeros((0, vectors.shape[1]), np.float32)
        return np.asarray(self.fn(vectors, pos), dtype=np.float32)


def _positions(where: Where) -> list[tuple[str, int]]:
    return [(str(doc), int(p)) for doc, p in where]


def _position_keys(table, path: str | Path) -> list[tuple[str, int]] | None:
    """``(doc_id, position)`` per row of a table keyed by ``doc_id`` + ``position`` / ``n_raw_tokens``; None if not keyed so."""
    cols = table.column_names
    if "doc_id" not in cols or not ("position" in cols or "n_raw_tokens" in cols):
        return None
    pos_col, shift = ("position", 0) if "position" in cols else ("n_raw_tokens", 1)
    docs = table.column("doc_id").to_pylist()
    positions = table.column(pos_col).to_pylist()
    if any(d is None for d in docs) or any(p is None for p in positions):
        raise CausalKLError(path, f"doc_id+{pos_col}", "null keys", "write a doc_id and a position on every row")
    keys = [(str(d), int(p) - shift) for d, p in zip(docs, positions)]
    if len(set(keys)) != len(keys):
        seen, dup = set(), []
        for k in keys:
            if k in seen:
                dup.append(k)
            seen.add(k)
        raise CausalKLError(path, f"doc_id+{pos_col}", f"{len(dup)} positions appear more than once ({preview(dup)})",
                            "write one row per (doc_id, position)")
    return keys


def _training_golds(entry: dict, route: str, train_gold: str | None, eval_doc_ids: set[str] | None) -> np.ndarray:
    from causal_kl.routes.training import read_training_golds

    if train_gold is None:
        raise CausalKLError(f"config routes.{route}", "train_rows", f"a {entry['kind']} route is fitted on training golds",
                            f"pass the route's train_gold file ({RUN_DIR}/{TEMPLATES['train_gold']})")
    _, train = read_training_golds(train_gold, eval_doc_ids)
    return train


def _check_width(got: int, d_model: int | None, file: str | Path, field_name: str) -> None:
    if d_model and got != d_model:
        raise CausalKLError(file, field_name, f"vector width {got} != model width {d_model}",
                            "use vectors of the model's hidden size at the configured layer")


def _pca(entry, layer, route, d_model, train_gold, eval_doc_ids, **_) -> Reconstructor:
    from causal_kl.routes import pca

    train = _training_golds(entry, route, train_gold, eval_doc_ids)
    _check_width(train.shape[1], d_model, train_gold, "activation")
    basis = pca.fit_pca(train, int(entry.get("k", 16)), bool(entry.get("center", True)), f"config routes.{route}")
    return Reconstructor("pca", route=route, d_model=d_model, fn=lambda v, _w: pca.project(basis, v),
                         info={"n_train": len(train), "explained_variance_ratio": float(basis.explained_variance_ratio.sum())})


def _text_channel(entry, layer, route, d_model, train_gold, eval_doc_ids, loaded, **_) -> Reconstructor:
    if loaded is None:
        raise CausalKLError(f"config routes.{route}", "kind", "a text_channel route verbalises with the run's model",
                            "pass loaded= (the run's model with its tokenizer) to build_reconstructor")
    from causal_kl.routes.text_channel import TextReconstructor, verbalise

    train = _training_golds(entry, route, train_gold, eval_doc_ids)
    _check_width(train.shape[1], d_model, train_gold, "activation")
    top_k = int(entry.get("top_k", 8))
    model = TextReconstructor.fit(verbalise(loaded, train, top_k), train, float(entry.get("ridge_alpha", 1.0)))
    return Reconstructor("text_channel", route=route, d_model=d_model,
                         fn=lambda v, _w: model.predict(verbalise(loaded, v, top_k)),
                         info={"n_train": len(train), "n_features": len(model.vocab), "top_k": top_k})


def _sae(entry, layer, route, d_model, device, **_) -> Reconstructor:
    from causal_kl.routes import sae as sae_route

    sae = sae_route.load_route_sae(entry, layer, d_model or None, device, f"config routes.{route}")
    batch = int(entry.get("batch_size") or 4096)
    return Reconstructor("sae", route=route, d_model=d_model, fn=lambda v, _w: sae_route.run_sae(sae, v, batch)[0],
                         info={"sae": sae.source, "architecture": sae.architecture, "d_sae": sae.d_sae})


def _file(entry, layer, route, d_model, **_) -> Reconstructor:
    from causal_kl.config import layer_path
    from causal_kl.io import arrow_to_vectors, check_vectors, read_parquet
    from causal_kl.routes.file import file_format

    path = Path(layer_path(entry["path"], layer))
    if not path.exists():
        raise CausalKLError(path, "path", "reconstruction file not found", "check the route's path")
    fmt = file_format(path, entry.get("format"))
    base = dict(route=route, d_model=d_model, info={"file": str(path)})
    if fmt != "parquet":
        return Reconstructor("file", reason=f"'{path}' ({fmt}) keys its vectors by site_id: it holds the eval sites' "
                             "vectors only, none at other positions", fix=f"write a parquet route file instead: {KEYED_FIX}", **base)
    import pyarrow.parquet as pq

    cols = pq.read_schema(path).names
    if not ("doc_id" in cols and ("position" in cols or "n_raw_tokens" in cols)):
        return Reconstructor("file", reason=f"'{path}' keys its rows by {'site_id' if 'site_id' in cols else 'no position'}: "
                             "it holds no vectors at positions other than the eval sites", fix=KEYED_FIX, **base)
    column = entry.get("column") or "reconstruction"
    table = read_parquet(path)
    if column not in table.column_names:
        raise CausalKLError(path, column, f"no vector column '{column}' (has {table.column_names})",
                            "set the route's column to the name of the vector column")
    keys = _position_keys(table, path)
    vectors = arrow_to_vectors(table.column(column), path, column)
    check_vectors(vectors, path, column, d_model or None)
    row = {k: i for i, k in enumerate(keys)}
    base["info"]["n_rows"] = len(keys)
    return Reconstructor("file", needs_where=True, keys=frozenset(row), fn=lambda _v, where: vectors[[row[w] for w in where]],
                         **base)


def _nla_ar(entry, layer, route, d_model, dtype, device, **_) -> Reconstructor:
    from causal_kl.config import layer_path
    from causal_kl.io import read_parquet

    path = Path(layer_path(entry["explanations"], layer))
    table = read_parquet(path)
    base = dict(route=route, d_model=d_model, info={"file": str(path), "checkpoint": entry["checkpoint"]})
    if "explanation" not in table.column_names:
        raise CausalKLError(path, "explanation", f"column missing (has {table.column_names})",
                            "write the explanations in a column named 'explanation'")
    keys = _position_keys(table, path)
    if keys is None:
        return Reconstructor("nla_ar", reason=f"'{path}' keys its explanations by site_id: it has none for positions "
                             "other than the eval sites", fix=f"{KEYED_FIX} (run the AV on those positions to explain them)", **base)
    texts = table.column("explanation").to_pylist()
    if any(t is None for t in texts):
        raise CausalKLError(path, "explanation", f"{sum(t is None for t in texts)} null explanations", "write a string per row")
    text_at = dict(zip(keys, texts))
    ar_cache: list = []  # the AR is loaded on the first call, not when the reconstructor is built

    def reconstruct(vectors, where):
        from causal_kl.routes import nla_ar

        if not ar_cache:  # checked against the run's width (the vectors' when d_model is not known)
            ar_cache.append(nla_ar.load_ar(entry["checkpoint"], int(layer), d_model or vectors.shape[1], dtype, device))
        return nla_ar.reconstruct(ar_cache[0], [text_at[w] for w in where], int(entry.get("batch_size", 16)))

    base["info"]["n_rows"] = len(keys)
    return Reconstructor("nla_ar", needs_where=True, keys=frozenset(text_at), fn=reconstruct, **base)


def _nla_av(entry, layer, route, d_model, **_) -> Reconstructor:
    return Reconstructor("nla_av", route=route, d_model=d_model,
                         reason="an nla_av route reconstructs a vector by an AV generation (one generate call per position), "
                                "too costly to run at every other position here",
                         fix="run the AV on those positions outside the pipeline and give the reconstructions as a file route "
                             "(or the explanations to an nla_ar route) keyed by doc_id + position")


BUILDERS = {"pca": _pca, "text_channel": _text_channel, "sae": _sae, "file": _file, "nla_ar": _nla_ar, "nla_av": _nla_av}


def build_reconstructor(entry: dict, layer: int, *, route: str, d_model: int, train_gold: str | None = None,
                        eval_doc_ids: set[str] | None = None, loaded=None, dtype: str = "float32",
                        device: str = "cpu") -> Reconstructor:
    """The ``Reconstructor`` of route ``route`` (its config ``entry``) at ``layer`` for a model of width ``d_model``.

    ``train_gold``: the route's training-gold file (``pca``, ``text_channel``), read with
    ``eval_doc_ids`` refused as training documents, as the recon jobs do; ``loaded``: the run's
    model with its tokenizer (``text_channel``); ``dtype``/``device``: where an AR or SAE runs.
    ``d_model`` 0 or None: the width is not known (nothing is checked against it; an ``nla_ar``
    route then checks its AR against the vectors' width).
    """
    kind = entry.get("kind")
    if kind not in BUILDERS:
        raise CausalKLError(f"config routes.{route}", "kind", f"unknown route kind {kind!r}", f"use one of {', '.join(BUILDERS)}")
    return BUILDERS[kind](entry=entry, layer=int(layer), route=route, d_model=int(d_model) if d_model else None,
                          train_gold=train_gold, eval_doc_ids=eval_doc_ids, loaded=loaded, dtype=dtype, device=device)
