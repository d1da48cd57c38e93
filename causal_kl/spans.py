"""Spans: splicing k positions p .. p+k-1 of a site at once (``patch.spans``; k = 1 is the single-site splice).

Inside a span, ``j`` indexes positions: ``j = 0`` is the site itself (position ``p``), ``j = 1 .. k-1`` the extra
positions ``p + j``. Everything at ``j = 0`` is exactly what the single-site code computes (the site's gold, its
reconstruction, its recorded noise direction, its resample source); the extra positions come from the
``SPAN_GOLD``, ``SPAN_RECON`` and ``SPAN_NOISE`` contracts, as ``[n, k - 1, d]`` arrays
(``io.span_vectors_for_sites``).

- **Eligibility.** A site's span of k fits when ``p + k - 1 <= n_tokens - 1``: every position of the span lies in
  the document (``n_tokens`` is ``DOCS``' count after truncation). Sites whose span does not fit are counted,
  listed and excluded from every condition at that span.
- **Resamples.** The sources are drawn among the eligible sites only, with ``conditions.resample_choices`` (same
  seeds, same law). A source is a site, so a resampled span is the source site's whole span: a contiguous span of
  the same length elsewhere in the same document (or another one). With k = 1 every site is eligible and the
  table is ``resample_choices``' table bit for bit.
- **Per-position rules.** Every condition is applied position by position with the single-site rule: gold is the
  span's golds, the reconstruction at gold norm uses each position's own gold norm, and matched noise is
  ``g_j + e_j * u_j`` with ``e_j = ||recon_goldnorm_j - g_j||`` and ``u_j`` seeded by ``(seed, site_id, j)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa

from causal_kl.conditions import (FLOOR_CONDITIONS, ROUTE_CONDITIONS, floor_vectors, noise_directions,
                                  resample_choices, route_vectors)
from causal_kl.errors import CausalKLError

SPAN_NOISE_TAG = 0x7370616E  # "span"; conditions.noise_directions uses "nois" for j = 0
"""The word that seeds the extra positions' noise directions apart from the site's own (j = 0) direction."""


def _check_span(k: int, where: str = "config", field: str = "patch.spans") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or int(k) < 1:
        raise CausalKLError(where, field, f"span length {k!r} is not a positive integer",
                            "give span lengths k >= 1 (1 is the single-site splice)")
    return int(k)


def span_fits(positions: np.ndarray, n_tokens: np.ndarray | int, k: int) -> np.ndarray:
    """Whether each site's span of ``k`` lies in its document: ``p + k - 1 <= n_tokens - 1``, ``[n]`` bool.

    ``positions [n]`` are the sites' positions ``p``; ``n_tokens [n]`` (or one int for all) the length of each
    site's document after truncation (``DOCS.n_tokens``)."""
    k = _check_span(k)
    p = np.asarray(positions, dtype=np.int64)
    t = np.asarray(n_tokens, dtype=np.int64)
    if p.ndim != 1 or (t.ndim != 0 and t.shape != p.shape):
        raise CausalKLError("sites.parquet", "position", f"positions of shape {p.shape} but n_tokens of shape {t.shape}",
                            "give one document length per site position")
    return (p >= 0) & (p + k - 1 <= t - 1)


def eligible_sites(sites: pa.Table, docs: pa.Table, k: int, sites_path: str | Path = "sites.parquet",
                   docs_path: str | Path = "docs.parquet") -> tuple[np.ndarray, dict]:
    """The sites (``SITES`` rows) whose span of ``k`` fits their document (``DOCS``): ``(mask [n] bool, summary)``.

    ``summary = {"span": k, "n_sites", "n_eligible", "n_excluded", "excluded_site_ids": [every excluded site id]}``.
    A site whose document has no ``DOCS`` row is an error."""
    k = _check_span(k)
    for table, path, cols in ((sites, sites_path, ("site_id", "doc_id", "position")), (docs, docs_path, ("doc_id", "n_tokens"))):
        missing = [c for c in cols if c not in table.column_names]
        if missing:
            raise CausalKLError(path, missing[0], f"column missing (has {table.column_names})",
                                f"write the file with the columns {list(cols)}")
    length: dict[str, int] = {}
    for doc, n in zip(docs["doc_id"].to_pylist(), docs["n_tokens"].to_pylist()):
        if doc in length and length[doc] != n:
            raise CausalKLError(docs_path, "doc_id", f"document {doc} listed twice with different lengths",
                                "rebuild sites.parquet and docs.parquet together")
        length[doc] = int(n)
    doc_ids = sites["doc_id"].to_pylist()
    unknown = sorted({d for d in doc_ids if d not in length})
    if unknown:
        shown = ", ".join(unknown[:3]) + (", ..." if len(unknown) > 3 else "")
        raise CausalKLError(docs_path, "doc_id", f"{len(unknown)} documents of the sites have no row ({shown})",
                            "rebuild sites.parquet and docs.parquet together")
    site_ids = np.asarray(sites["site_id"].to_numpy(zero_copy_only=False), dtype=np.int64)
    positions = np.asarray(sites["position"].to_numpy(zero_copy_only=False), dtype=np.int64)
    mask = span_fits(positions, np.asarray([length[d] for d in doc_ids], dtype=np.int64), k)
    excluded = [int(s) for s in site_ids[~mask]]
    summary = {"span": k, "n_sites": int(len(mask)), "n_eligible": int(mask.sum()), "n_excluded": len(excluded),
               "excluded_site_ids": excluded}
    return mask, summary


def check_spans_fit(spans: Sequence[int], sites_path: str | Path, docs_path: str | Path,
                    source: str = "config") -> None:
    """Every span of more than one position fits sites of at least two documents of the run, as its cross-document
    resample needs (``span_choices``): one line naming the longest span that does, as soon as the sites exist.

    A span of k fits a site at position p of a document of n tokens when ``p + k <= n`` (``span_fits``); sites
    whose span does not fit are excluded and counted at that span, which is fine as long as two documents keep
    some. Reads only the ``doc_id``/``position`` and ``doc_id``/``n_tokens`` columns of ``SITES`` and ``DOCS``."""
    from causal_kl.contracts import DOCS, SITES
    from causal_kl.io import read_parquet

    extra = sorted(_check_span(k, source) for k in spans if int(k) > 1)
    if not extra:
        return
    sites = read_parquet(sites_path, SITES, columns=["doc_id", "position"])  # (one line when a file is bad)
    docs = read_parquet(docs_path, DOCS, columns=["doc_id", "n_tokens"])
    length = dict(zip(docs["doc_id"].to_pylist(), docs["n_tokens"].to_pylist()))
    room: dict[str, int] = {}  # per document: the longest span that fits one of its sites
    for doc, p in zip(sites["doc_id"].to_pylist(), sites["position"].to_pylist()):
        if doc in length:
            room[doc] = max(room.get(doc, 0), int(length[doc]) - int(p))
    ranked = sorted(room.values(), reverse=True)
    longest_two = ranked[1] if len(ranked) > 1 else 0
    for k in extra:
        if k > longest_two:
            n_fit = sum(r >= k for r in ranked)
            fix = (f"list spans of at most {longest_two} in patch.spans (the longest that fits sites of two documents), "
                   "or sample longer documents (corpus.rows, sites.max_length)" if longest_two > 1 else
                   "list only span 1 in patch.spans, or sample longer documents from more rows (corpus.rows, "
                   "sites.max_length)")
            raise CausalKLError(docs_path, "patch.spans",
                                f"span {k} fits sites of {n_fit} of the run's {len(ranked)} documents (a span of k fits "
                                "a site at position p when p + k <= the document's length in tokens), and its "
                                "cross-document resample needs two", fix)


def extension_positions(positions: np.ndarray, k: int) -> np.ndarray:
    """The extra positions of each site's span, ``p + 1 .. p + k - 1``: ``[n, k - 1]`` int64 (``[n, 0]`` for k = 1)."""
    k = _check_span(k)
    p = np.asarray(positions, dtype=np.int64)
    if p.ndim != 1:
        raise CausalKLError("sites.parquet", "position", f"positions of shape {p.shape}, expected [n]",
                            "give one position per site")
    return p[:, None] + np.arange(1, k, dtype=np.int64)[None, :]


def span_choices(site_ids: Sequence[int], doc_ids: Sequence[str], seed: int,
                 eligible: np.ndarray | None = None) -> pa.Table:
    """Seeded resample sources (``CONDITION_CHOICES`` columns) among the eligible sites only.

    ``conditions.resample_choices`` called on exactly the eligible sites (``eligible [n]`` bool over
    ``site_ids``; all of them when not given), so the same seeds and the same law: with k = 1 every site is
    eligible and the table is ``resample_choices(site_ids, doc_ids, seed)`` bit for bit. Rows are the eligible
    sites in ``site_ids`` order; every source is an eligible site, so a resampled span is the source site's whole
    span (a contiguous span of the same length in the same document, or in another one)."""
    site_ids = [int(s) for s in site_ids]
    doc_ids = list(doc_ids)
    if len(site_ids) != len(doc_ids):
        raise CausalKLError("sites.parquet", "doc_id", f"{len(site_ids)} site ids but {len(doc_ids)} document ids",
                            "give one document id per site")
    if eligible is not None:
        keep = np.asarray(eligible, dtype=bool)
        if keep.shape != (len(site_ids),):
            raise CausalKLError("sites.parquet", "site_id", f"eligibility mask of shape {keep.shape} for {len(site_ids)} sites",
                                "give one eligibility flag per site (spans.eligible_sites)")
        site_ids = [s for s, e in zip(site_ids, keep) if e]
        doc_ids = [d for d, e in zip(doc_ids, keep) if e]
    if len(set(doc_ids)) < 2:
        raise CausalKLError("sites.parquet", "doc_id",
                            f"the {len(site_ids)} sites whose span fits come from {len(set(doc_ids))} document(s), "
                            "so there is no cross-document resample",
                            "use shorter spans (patch.spans) or sample sites from more documents (widen corpus.rows)")
    return resample_choices(site_ids, doc_ids, seed)


def span_noise_directions(site_ids: Sequence[int], k: int, d: int, seed: int) -> np.ndarray:
    """Uniform random unit directions of the matched noise at each site's extra positions: ``[n, k - 1, d]`` float64.

    Position j (1 .. k-1) of site s is seeded by ``(seed, s, SPAN_NOISE_TAG, j)`` only, so a direction never depends
    on the other sites of the call and never coincides with the site's own (j = 0) direction, which
    ``conditions.noise_directions`` seeds by ``(seed, s, "nois")``."""
    k = _check_span(k)
    out = np.empty((len(site_ids), k - 1, int(d)), dtype=np.float64)
    for i, s in enumerate(site_ids):
        for j in range(1, k):
            v = np.random.default_rng([int(seed), int(s), SPAN_NOISE_TAG, j]).standard_normal(int(d))
            out[i, j - 1] = v / np.linalg.norm(v)
    return out


def span_stack(site_vectors: np.ndarray, ext_vectors: np.ndarray, what: str = "gold",
               field: str = "activation") -> np.ndarray:
    """The whole span per site: ``site_vectors [n, d]`` (j = 0) then ``ext_vectors [n, k - 1, d]`` -> ``[n, k, d]``.

    The dtype is the two inputs' common one (so j = 0 holds ``site_vectors`` exactly)."""
    site_vectors = np.asarray(site_vectors)
    ext_vectors = np.asarray(ext_vectors)
    if site_vectors.ndim != 2:
        raise CausalKLError(what, field, f"site vectors of shape {site_vectors.shape}, expected [n, d]",
                            "give one vector per site")
    n, d = site_vectors.shape
    if ext_vectors.ndim != 3 or ext_vectors.shape[0] != n or ext_vectors.shape[2] != d:
        raise CausalKLError(what, field, f"span vectors of shape {ext_vectors.shape} for site vectors of shape {(n, d)}, "
                            f"expected [{n}, k - 1, {d}]",
                            "give the extra positions j = 1 .. k-1 of the same sites, in the same order, at the same width")
    dt = np.result_type(site_vectors.dtype, ext_vectors.dtype)
    return np.concatenate([site_vectors.astype(dt, copy=False)[:, None], ext_vectors.astype(dt, copy=False)], axis=1)


def span_floor_vectors(site_golds: np.ndarray, ext_golds: np.ndarray, site_ids: Sequence[int], choices: pa.Table,
                       mean: np.ndarray, choices_path: str = "conditions/choices.parquet"
                       ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The route-independent conditions over whole spans: name -> (vectors ``[n, k, d]`` float32, valid ``[n]`` bool).

    ``site_golds [n, d]`` and ``ext_golds [n, k - 1, d]`` are the golds at j = 0 and j = 1 .. k-1 of ``site_ids``;
    ``choices`` (``CONDITION_CHOICES``, e.g. ``span_choices``) covers these sites with sources among them.
    gold: the site's own span golds; resamples: the source site's span golds (same-doc invalid when the source is
    -1); zero; mean [d] at every position. Each position j is ``conditions.floor_vectors`` on the golds at j, so with
    k = 1 the result is ``floor_vectors(...)[c][0][:, None]`` exactly."""
    full = span_stack(site_golds, ext_golds, "gold", "activation")
    if len(site_ids) != full.shape[0]:
        raise CausalKLError("gold", "site_id", f"{len(site_ids)} site ids for {full.shape[0]} golds",
                            "give one site id per gold")
    mean = np.asarray(mean)
    if mean.shape != (full.shape[2],):
        raise CausalKLError("conditions/mean.parquet", "mean", f"mean of shape {mean.shape}, expected [{full.shape[2]}]",
                            "delete conditions/ and rerun, so the mean is computed from this run's golds")
    per_j = [floor_vectors(full[:, j], site_ids, choices, mean, choices_path) for j in range(full.shape[1])]
    return {c: (np.stack([v[c][0] for v in per_j], axis=1), per_j[0][c][1]) for c in FLOOR_CONDITIONS}


def span_route_vectors(site_golds: np.ndarray, ext_golds: np.ndarray, site_recon: np.ndarray, ext_recon: np.ndarray,
                       site_ids: Sequence[int], seed: int, site_directions: np.ndarray | None = None,
                       ext_directions: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The three per-route conditions over whole spans: name -> ``[n, k, d]`` float32, rows in ``site_ids`` order.

    Golds, reconstructions and noise directions at j = 0 (``[n, d]``) and j = 1 .. k-1 (``[n, k - 1, d]``); the
    directions default to ``conditions.noise_directions`` / ``span_noise_directions`` (pass the recorded ones).
    Every position follows ``conditions.route_vectors``' rules on its own: the reconstruction at that position's
    gold norm, the raw reconstruction, and ``g_j + e_j * u_j`` with ``e_j = ||recon_goldnorm_j - g_j||`` (each
    position's noise norm is that position's reconstruction error). With k = 1 the result is
    ``route_vectors(...)[c][:, None]`` bit for bit."""
    golds = span_stack(site_golds, ext_golds, "gold", "activation")
    recons = span_stack(site_recon, ext_recon, "recon", "reconstruction")
    n, k, d = golds.shape
    if recons.shape != golds.shape:
        raise CausalKLError("recon", "reconstruction", f"span reconstructions of shape {recons.shape} != span golds' "
                            f"{golds.shape}", "give one reconstruction of the model's width per site and span position")
    if len(site_ids) != n:
        raise CausalKLError("recon", "site_id", f"{len(site_ids)} site ids for {n} sites",
                            "give one site id per reconstruction")
    if site_directions is None:
        site_directions = noise_directions(site_ids, d, seed)
    if ext_directions is None:
        ext_directions = span_noise_directions(site_ids, k, d, seed)
    dirs = span_stack(site_directions, ext_directions, "noise", "direction")
    if dirs.shape != golds.shape:
        raise CausalKLError("noise", "direction", f"span noise directions of shape {dirs.shape} != span golds' "
                            f"{golds.shape}", "delete the recorded noise directions and rerun, so they are drawn for this span")
    flat_ids = np.repeat(np.asarray([int(s) for s in site_ids], dtype=np.int64), k).tolist()
    rv = route_vectors(golds.reshape(n * k, d), recons.reshape(n * k, d), flat_ids, seed,
                       directions=dirs.reshape(n * k, d))
    return {c: rv[c].reshape(n, k, d) for c in ROUTE_CONDITIONS}
