"""Atomic writes, provenance metadata, vector columns, and one reader per data contract.

Every file this package writes goes to a temporary name beside its target and is renamed
into place, so a killed job never leaves a half-written output. Parquet files carry a
``causal_kl`` metadata entry: config hash, model, code version, what made them.

Readers (``read_sites``, ``read_docs``, ``read_gold``, ``read_recon``, ``read_choices``,
``read_mean``, ``read_noise``, ``read_patch``, ``read_geometry``): one per contract of
``causal_kl.contracts``, each checking the contract with one-line errors and reading only the
columns and rows it needs; ``vectors_for_sites``, the one way to take "the vectors of these site
ids, in this order"; ``patch_dataset``, a layer's patch rows as one lazily scanned dataset.

Aggregates (``concat_parquet``) stream their shards to their output one row group at a time, so
their memory does not grow with the number of sites.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from causal_kl import __version__, code_version, paths  # noqa: F401 - code_version: read here by the rest
from causal_kl.contracts import (CONDITION_CHOICES, Contract, DOCS, EVAL_MEAN, GEOMETRY, GOLD, NOISE_DIRECTIONS, PATCH,
                                 RECON, SITES, SPAN_GOLD, SPAN_NOISE, SPAN_RECON)
from causal_kl.errors import CausalKLError

PROVENANCE_KEY = b"causal_kl"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if tmp.is_file():  # mkstemp makes 0600; outputs get the usual umask-derived mode (shared clusters)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_csv(path: str | Path, df) -> None:
    """A table (DataFrame) as CSV with 6 significant digits, atomically."""
    write_text(path, df.to_csv(index=False, float_format="%.6g"))


def read_csv(path: str | Path):
    """A table the pipeline wrote as CSV, as a DataFrame."""
    import pandas as pd

    return pd.read_csv(path, keep_default_na=True)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


DIGEST_CACHE = Path(".snakemake") / "causal_kl" / "digests.json"
"""Digests already computed, by (path, size, mtime): a parse re-hashes only files that changed."""

_SMALL = 1 << 20


def _file_digest(path: Path, cache: dict) -> str:
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    if key not in cache:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
        cache[key] = h.hexdigest()
    return cache[key]


def content_fingerprint(path: str | Path, cache_file: str | Path | None = DIGEST_CACHE) -> str:
    """What an external input is, by content: the sha256 of a file; for a folder (a model checkpoint),
    a digest of every file's name, size and modification time and of the content of its small files
    (config.json, tokenizer files), so that replaced weights change it without re-reading 50 GB.

    Rules pass this as a param, so replacing a file behind the same path reruns what read it.
    Digests of unchanged files come from ``cache_file``. (``checkpoints.stat_fingerprint`` is the cheap one the
    model server checks on every request: by stat alone.)
    """
    path = Path(path)
    cache: dict = {}
    cache_path = Path(cache_file) if cache_file else None
    if cache_path is not None and cache_path.exists():
        try:
            cache = json.loads(cache_path.read_text())
        except (OSError, json.JSONDecodeError):
            cache = {}
    n = len(cache)
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            st = f.stat()
            h.update(f"{f.relative_to(path)}|{st.st_size}|{st.st_mtime_ns}|".encode())
            if st.st_size <= _SMALL:
                h.update(_file_digest(f, cache).encode())
        digest = h.hexdigest()
    elif path.exists():
        digest = _file_digest(path, cache)
    else:
        return "missing"
    if cache_path is not None and len(cache) != n:
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            write_text(cache_path, json.dumps(cache))
        except OSError:
            pass  # a read-only workdir only loses the cache
    return digest


def provenance(config_hash: str | None = None, model: str | None = None, **extra: Any) -> dict[str, Any]:
    """The provenance record stored in every output."""
    rec = {
        "config_hash": config_hash,
        "model": model,
        "code_version": code_version(),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    rec.update(extra)
    return rec


def vectors_to_arrow(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """``[n, d]`` float array -> Arrow fixed-size list of float32."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"expected [n, d] vectors, got shape {vectors.shape}")
    n, d = vectors.shape
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), type=pa.float32()), d)


def arrow_to_vectors(column: pa.ChunkedArray | pa.Array, path: str | Path = "?", field: str = "?") -> np.ndarray:
    """Arrow (fixed-size) list column -> ``[n, d]`` float32 array; ragged lists are an error."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    n = len(column)
    if n == 0:
        width = column.type.list_size if pa.types.is_fixed_size_list(column.type) else 0
        return np.zeros((0, width), dtype=np.float32)
    if column.null_count:
        raise CausalKLError(path, field, f"{column.null_count} null vectors", "write one vector per row")
    if pa.types.is_fixed_size_list(column.type):
        d = column.type.list_size
        flat = column.flatten().to_numpy(zero_copy_only=False)
        return flat.astype(np.float32, copy=False).reshape(n, d)
    lengths = np.asarray(column.value_lengths())
    if len(set(lengths.tolist())) != 1:
        raise CausalKLError(path, field, f"vectors of different widths {sorted(set(lengths.tolist()))[:5]}",
                            "write vectors of one width, the model's hidden size")
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return flat.astype(np.float32, copy=False).reshape(n, int(lengths[0]))


def write_parquet(
    path: str | Path,
    data: pa.Table | dict[str, Any],
    contract: Contract | None = None,
    d: int | None = None,
    meta: dict[str, Any] | None = None,
) -> None:
    """Write ``data`` atomically; cast to ``contract``'s schema; store ``meta`` as provenance."""
    if isinstance(data, dict):
        cols = {}
        for k, v in data.items():
            if isinstance(v, np.ndarray) and v.ndim == 2:
                cols[k] = vectors_to_arrow(v)
            else:
                cols[k] = v
        table = pa.table(cols)
    else:
        table = data
    if contract is not None:
        schema = contract.schema(d)
        extra = [f for f in table.schema if f.name not in schema.names]
        table = table.select(schema.names + [f.name for f in extra])
        table = table.cast(pa.schema(list(schema) + extra))
    md = dict(table.schema.metadata or {})
    if meta is not None:
        md[PROVENANCE_KEY] = json.dumps(meta, default=_json_default).encode()
    table = table.replace_schema_metadata(md)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _unreadable(path: Path, e: Exception) -> CausalKLError:
    return CausalKLError(path, None, f"not a readable parquet file ({str(e).splitlines()[0]})",
                         "delete it and rerun snakemake (a plain rerun keeps it: its date looks current), "
                         "or point the config at a parquet file")


def parquet_schema(path: str | Path, contract: Contract | None = None, d: int | None = None) -> pa.Schema:
    """A parquet file's schema (its footer only, no rows read), checked against ``contract``; one-line errors when
    the file is missing, unreadable or breaks the contract."""
    path = Path(path)
    if not path.exists():
        raise CausalKLError(path, None, "file not found", "check the path in the config, or build it with snakemake")
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise _unreadable(path, e) from e
    if contract is not None:
        contract.check(schema, path, d)
    return schema


def parquet_rows(path: str | Path) -> int:
    """The number of rows of a parquet file, from its footer."""
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowInvalid, OSError) as e:
        raise _unreadable(Path(path), e) from e


def read_parquet(path: str | Path, contract: Contract | None = None, d: int | None = None,
                 columns: list[str] | None = None) -> pa.Table:
    """Read a parquet file (only ``columns``, when given) with a clear error when it is missing or breaks ``contract``."""
    path = Path(path)
    parquet_schema(path, contract, d)
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowInvalid, OSError) as e:
        raise _unreadable(path, e) from e


def read_provenance(path: str | Path) -> dict[str, Any]:
    md = pq.read_schema(path).metadata or {}
    raw = md.get(PROVENANCE_KEY)
    return json.loads(raw) if raw else {}


ROW_GROUP_BYTES = 4 << 20
"""What an aggregate holds in memory before it writes a row group: small shards are coalesced up to this size (a
shard larger than it is one row group of its own)."""


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns, in its order and types (a column it lacks: nulls)."""
    n = table.num_rows
    cols = [table[f.name] if f.name in table.column_names else pa.nulls(n, f.type) for f in schema]
    return pa.Table.from_arrays(cols, schema=schema.remove_metadata()).cast(schema.remove_metadata())


def concat_parquet(paths: list[str | Path], out: str | Path, contract: Contract | None = None,
                   d: int | None = None, meta: dict[str, Any] | None = None) -> int:
    """Concatenate per-shard files (same contract) into one, atomically and in bounded memory; return its row count.

    The shards are read one row group at a time and written as the output's row groups (small ones coalesced up to
    ``ROW_GROUP_BYTES``), so the peak memory is about one row group's whatever the number of shards. Rows keep the
    shards' order; columns take ``contract``'s schema (dictionary-encoded where it says so; a shard's extra columns
    are kept, nulls where another shard lacks them), or without a contract the shards' schemas unified.
    """
    paths = [Path(p) for p in paths]
    schemas = [parquet_schema(p, contract, d) for p in paths]
    if contract is not None:
        schema = contract.schema(d)
        extra: dict[str, pa.Field] = {}
        for sch in schemas:
            extra.update({f.name: f for f in sch if f.name not in schema.names and f.name not in extra})
        schema = pa.schema(list(schema) + list(extra.values()))
    elif schemas:
        schema = pa.unify_schemas([sch.remove_metadata() for sch in schemas])
    else:
        schema = pa.schema([])
    if meta is not None:
        schema = schema.with_metadata({PROVENANCE_KEY: json.dumps(meta, default=_json_default).encode()})
    if not schema.names:  # no shards and no contract: an empty file, as an empty concatenation always was
        write_parquet(out, pa.table({}), meta=meta)
        return 0
    rows = 0
    with atomic_path(out) as tmp:
        with pq.ParquetWriter(tmp, schema) as writer:
            pending: list[pa.Table] = []
            size = 0

            def flush() -> None:
                nonlocal pending, size
                if pending:
                    writer.write_table(pa.concat_tables(pending).unify_dictionaries())
                    pa.default_memory_pool().release_unused()
                pending, size = [], 0

            for p in paths:
                for part in _row_groups(p):
                    try:
                        part = _conform(part, schema)
                    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                        raise CausalKLError(p, None, f"its columns do not fit the others' ({str(e).splitlines()[0]})",
                                            "delete it and rerun snakemake, so every shard is written the same way") from e
                    pending.append(part)
                    size += part.nbytes
                    rows += part.num_rows
                    if size >= ROW_GROUP_BYTES:
                        flush()
            flush()
    return rows


def _row_groups(path: Path, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """The row groups of a parquet file (only ``columns``, when given), one at a time; unreadable: a one-line error."""
    try:
        file = pq.ParquetFile(path)
        for i in range(file.num_row_groups):
            yield file.read_row_group(i, columns=columns, use_threads=False)
    except (pa.ArrowInvalid, OSError) as e:
        raise _unreadable(path, e) from e


# ---------------------------------------------------------------------------- one reader per contract
def check_vectors(vectors: np.ndarray, path: str | Path, field: str, d: int | None = None) -> None:
    """Width and finiteness of a ``[n, d]`` vector block, with a one-line error."""
    if vectors.ndim != 2:
        raise CausalKLError(path, field, f"expected one vector per row, got shape {vectors.shape}", "store [n, d] vectors")
    if d is not None and vectors.shape[1] != d:
        raise CausalKLError(path, field, f"vector width {vectors.shape[1]} != model width {d}",
                            "use vectors of the model's hidden size at the configured layer")
    bad = np.zeros(len(vectors), dtype=bool)
    for i in range(0, len(vectors), 1 << 14):  # in blocks: a [n, d] mask of 100k golds would be 0.5 GB
        bad[i:i + (1 << 14)] = ~np.isfinite(vectors[i:i + (1 << 14)]).all(axis=1)
    if bad.any():
        raise CausalKLError(path, field, f"{int(bad.sum())} vectors contain NaN or inf (first at row {int(np.argmax(bad))})",
                            "recompute those vectors or drop the sites")


def preview(values: list) -> str:
    """The first three values of a list, for error messages."""
    return ", ".join(str(v) for v in values[:3]) + (", ..." if len(values) > 3 else "")


def vectors_for_sites(site_ids: np.ndarray, vectors: np.ndarray, want: np.ndarray, path: str | Path,
                      field: str = "site_id", exact: bool = False, fix: str | None = None) -> np.ndarray:
    """The rows of ``vectors [n, d]`` (one per ``site_ids [n]``) for the sites ``want``, in that order.

    A site of ``want`` without a row is an error; with ``exact`` so are duplicate rows and rows
    for sites not in ``want`` (a file meant to hold exactly the run's sites). Errors name
    ``path`` and ``field`` on one line; ``fix`` says how to mend the file.
    """
    site_ids = np.asarray(site_ids, dtype=np.int64)
    if len(site_ids) != len(vectors):
        raise CausalKLError(path, field, f"{len(vectors)} vectors but {len(site_ids)} site ids",
                            "write exactly one site id per vector")
    index = {int(s): i for i, s in enumerate(site_ids)}
    fix = fix or "write a vector for every site of the run's sites.parquet"
    if exact:
        if len(index) != len(site_ids):
            uniq, counts = np.unique(site_ids, return_counts=True)
            raise CausalKLError(path, "site_id", f"duplicate sites ({preview(uniq[counts > 1].tolist())})",
                                "write one vector per site")
        extra = sorted(set(index) - set(int(s) for s in want))
        if extra:
            raise CausalKLError(path, "site_id", f"{len(extra)} extra sites not in the eval set ({preview(extra)})",
                                "keep only rows for the sites of the run's sites.parquet")
    missing = [int(s) for s in want if int(s) not in index]
    if missing:
        raise CausalKLError(path, "site_id", f"{len(missing)} eval sites missing ({preview(missing)})", fix)
    return vectors[[index[int(s)] for s in want]]


def read_sites(path: str | Path) -> pa.Table:
    """``SITES``: one row per site, in stage-0 order."""
    return read_parquet(path, SITES)


def read_docs(path: str | Path) -> dict[str, list[int]]:
    """``DOCS`` as ``{doc_id: input_ids}`` (the tokens the patch engine needs)."""
    t = read_parquet(path, DOCS)
    return {d: list(ids) for d, ids in zip(t["doc_id"].to_pylist(), t["input_ids"].to_pylist())}


def _vector_table(path: str | Path, contract: Contract, column: str, d: int | None) -> tuple[np.ndarray, np.ndarray]:
    schema = parquet_schema(path, contract, d)
    if not pa.types.is_fixed_size_list(schema.field(column).type):  # (ragged) lists: read whole, checked there
        t = read_parquet(path, contract, d)
        vec = arrow_to_vectors(t[column], path, column)
        check_vectors(vec, path, column, d)
        return np.asarray(t["site_id"].to_numpy(), dtype=np.int64), vec
    # fixed-size vectors: one row group at a time into the arrays returned, so the peak is the vectors once
    # (not an Arrow copy beside a numpy one: at 100k sites of gemma-3-27b the golds alone are 2.2 GB)
    n = parquet_rows(path)
    ids = np.empty(n, dtype=np.int64)
    vec = np.empty((n, schema.field(column).type.list_size), dtype=np.float32)
    at = 0
    for part in _row_groups(Path(path), ["site_id", column]):
        m = part.num_rows
        ids[at:at + m] = part["site_id"].to_numpy()
        vec[at:at + m] = arrow_to_vectors(part[column], path, column)
        at += m
    check_vectors(vec, path, column, d)
    return ids, vec


def read_gold(path: str | Path, d: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``GOLD`` as ``(site_ids [n], activations [n, d] float32)``, width and finiteness checked."""
    return _vector_table(path, GOLD, "activation", d)


def read_recon(path: str | Path, d: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``RECON`` as ``(site_ids [n], reconstructions [n, d] float32)``, width and finiteness checked."""
    return _vector_table(path, RECON, "reconstruction", d)


def read_noise(path: str | Path, d: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``NOISE_DIRECTIONS`` as ``(site_ids [n], unit directions [n, d] float32)``."""
    return _vector_table(path, NOISE_DIRECTIONS, "direction", d)


def read_docs_table(path: str | Path) -> pa.Table:
    """``DOCS`` as a table (``n_tokens`` says where each document ends)."""
    return read_parquet(path, DOCS)


def _span_table(path: str | Path, contract: Contract, column: str, d: int | None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = read_parquet(path, contract, d)
    vec = arrow_to_vectors(t[column], path, column) if t.num_rows else np.zeros((0, d or 0), np.float32)
    if t.num_rows:
        check_vectors(vec, path, column, d)
    return (np.asarray(t["site_id"].to_numpy(), dtype=np.int64), np.asarray(t["j"].to_numpy(), dtype=np.int64), vec)


def read_span_gold(path: str | Path, d: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``SPAN_GOLD`` as ``(site_ids [m], j [m], activations [m, d] float32)``."""
    return _span_table(path, SPAN_GOLD, "activation", d)


def read_span_recon(path: str | Path, d: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``SPAN_RECON`` as ``(site_ids [m], j [m], reconstructions [m, d] float32)``."""
    return _span_table(path, SPAN_RECON, "reconstruction", d)


def read_span_noise(path: str | Path, d: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``SPAN_NOISE`` as ``(site_ids [m], j [m], unit directions [m, d] float32)``."""
    return _span_table(path, SPAN_NOISE, "direction", d)


def span_vectors_for_sites(site_ids: np.ndarray, js: np.ndarray, vectors: np.ndarray, want: np.ndarray, k: int,
                           path: str | Path, fix: str | None = None) -> np.ndarray:
    """The vectors at positions j = 1 .. k-1 of each site of ``want``, in that order: ``[n, k - 1, d]``.

    ``(site_ids, js, vectors)`` as a span reader returns them (rows may come in any order, and may hold
    larger j, or more sites, than asked for). A missing (site, j) is a one-line error naming ``path``.
    """
    d = vectors.shape[1] if vectors.ndim == 2 else 0
    out = np.zeros((len(want), max(k - 1, 0), d), dtype=vectors.dtype if vectors.size else np.float32)
    if k <= 1 or not len(want):
        return out
    index = {(int(s), int(j)): i for i, (s, j) in enumerate(zip(site_ids, js))}
    missing = [(int(s), j) for s in want for j in range(1, k) if (int(s), j) not in index]
    if missing:
        raise CausalKLError(path, "site_id", f"{len(missing)} span positions missing (site, j: {preview(missing)})",
                            fix or f"delete {path} and rerun, so it is built for this run's sites and span {k}")
    rows = np.asarray([[index[(int(s), j)] for j in range(1, k)] for s in want], dtype=np.int64)
    return vectors[rows]


def read_choices(path: str | Path) -> pa.Table:
    """``CONDITION_CHOICES``: the recorded resample sources per site."""
    return read_parquet(path, CONDITION_CHOICES)


def read_mean(path: str | Path, d: int | None = None) -> np.ndarray:
    """The eval-set mean gold ``[d]`` (float32) from ``conditions/mean.parquet``, width (given ``d``) and finiteness
    checked."""
    t = read_parquet(path, EVAL_MEAN, d)
    mean = arrow_to_vectors(t["mean"], path, "mean")
    check_vectors(mean, path, "mean", d)
    return mean[0]


def read_patch(path: str | Path | list, route: str | None = None, offsets: list[int] | None = None,
               columns: list[str] | None = None, conditions: list[str] | None = None):
    """``PATCH`` rows (a DataFrame) of the floors and, when given, one route; only the rows and columns asked for.

    ``path`` is one PATCH file or several (the floors' and a route's aggregate). Rows are filtered while the files are
    scanned (``offsets``, ``conditions``: only those), and only ``columns`` (default: every PATCH column) are read;
    ``route`` and ``condition`` come back as pandas categories. A route's own rows of floor conditions (there should
    be none) are dropped, so each (site, condition, offset) appears once. A route file without rows is an error unless
    its provenance says why the route was skipped (then the floors come back alone).
    """
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    from causal_kl.conditions import ROUTE_CONDITIONS

    paths = list(path) if isinstance(path, (list, tuple)) else [path]
    keep = ds.field("route") == ""
    if route is not None:
        keep = keep | ((ds.field("route") == route) & ds.field("condition").isin(list(ROUTE_CONDITIONS)))
    if offsets is not None:
        keep = keep & ds.field("offset").isin(pa.array(sorted({int(o) for o in offsets}), pa.int32()))
    if conditions is not None:
        keep = keep & ds.field("condition").isin(list(conditions))
    want = list(columns) if columns is not None else PATCH.names
    scan = want + [c for c in ("route", "condition", "offset") if c not in want]  # what the filter reads
    schema = pa.schema([PATCH.schema().field(c) for c in want])
    kept, n_route, n_floors = [], 0, 0
    for p in paths:
        parquet_schema(p, PATCH)
        for part in _row_groups(Path(p), scan):  # one row group at a time: the peak is what is kept, not the file
            part = part.filter(keep)
            floors = int(pc.sum(pc.equal(part["route"], "")).as_py() or 0)
            n_floors, n_route = n_floors + floors, n_route + part.num_rows - floors
            kept.append(_conform(part.select(want), schema))
    table = pa.concat_tables(kept) if kept else schema.empty_table()
    del kept
    path = paths[-1]
    if route is not None and not n_route and not read_provenance(path).get("skipped"):
        # (a route skipped for a span, e.g. no vectors at its extra positions, says so in its provenance)
        raise CausalKLError(path, "route", f"no rows for route '{route}'",
                            f"delete it and rebuild it: snakemake {path}")
    if not n_floors:
        raise CausalKLError(path, "route", "no floor rows (route \"\")", "patch the floors first")
    return _frame(table)


def _frame(table: pa.Table):
    """``table`` as a DataFrame, a column at a time, each Arrow column released once converted: dictionary columns
    become categories of only the values present (no string per row), the others numpy arrays of their own type."""
    import pandas as pd

    columns = {}
    for name in table.column_names:
        column = table.column(name)
        table = table.drop_columns([name])
        columns[name] = _categories(column) if pa.types.is_dictionary(column.type) else column.to_numpy()
        del column
    return pd.DataFrame(columns, copy=False)


def _categories(column: pa.ChunkedArray):
    """A dictionary column as a pandas Categorical of the values it holds (chunks' dictionaries unified), in the
    dictionary's order; one byte or so per row, built chunk by chunk."""
    import pandas as pd

    column = pa.table({"c": column}).unify_dictionaries().column(0)
    values = column.chunk(0).dictionary if column.num_chunks else pa.array([], column.type.value_type)
    counts = np.zeros(len(values), dtype=np.int64)
    for chunk in column.chunks:
        counts += np.bincount(chunk.indices.to_numpy(zero_copy_only=False), minlength=len(values))
    used = counts > 0
    codes_of = (np.cumsum(used) - 1).astype(np.min_scalar_type(-max(int(used.sum()), 1)))
    codes = np.empty(len(column), dtype=codes_of.dtype)
    at = 0
    for chunk in column.chunks:
        codes[at:at + len(chunk)] = codes_of[chunk.indices.to_numpy(zero_copy_only=False)]
        at += len(chunk)
    return pd.Categorical.from_codes(codes, categories=pd.Index(values.to_pylist())[used])


def patch_index(files: list[str | Path], index: str | Path) -> dict[str, Any]:
    """The record of a layer's patch dataset (``L{layer}/patch.json``): every PATCH aggregate of the layer (each span's
    floors and routes) with its span, route, row count, the patch method that ran (and why not the fast one, where it
    could not) and, for a route skipped at a span, why; paths relative to the
    index's folder, so a copied results folder keeps working. Read from the files' footers: no rows are read."""
    base = Path(index).parent
    entries = []
    for f in files:
        f = Path(f)
        parquet_schema(f, PATCH)
        prov = read_provenance(f)
        span = prov.get("span")
        if span is None and (where := paths.fields(paths.TEMPLATES["patch"], f)):  # L{layer}/span{k}/patch/{name}
            span = int(where["span"])
        entry = {"path": os.path.relpath(f, base), "span": span, "route": prov.get("route") or "",
                 "rows": parquet_rows(f)}
        if prov.get("skipped"):
            entry["skipped"] = prov["skipped"]
        for key in ("method", "fast_path_unavailable"):  # the patch path that ran (naive where fast could not)
            if prov.get(key):
                entry[key] = prov[key]
        entries.append(entry)
    return {"contract": PATCH.name, "columns": {f.name: str(f.type) for f in PATCH.schema()},
            "rows": sum(e["rows"] for e in entries), "files": entries}


def patch_dataset(path: str | Path):
    """A layer's PATCH rows as a ``pyarrow.dataset.Dataset``: every span's floors and routes, scanned lazily.

    ``path`` is a layer's folder (``results/{run}/L{layer}``) or its ``patch.json``. Filter and project while scanning,
    e.g. ``patch_dataset("results/demo/L3").to_table(columns=["site_id", "kl"], filter=(ds.field("span") == 1) &
    (ds.field("offset") == 0))``; ``duckdb.sql("SELECT ... FROM 'results/demo/L3/span*/patch/*.parquet'")`` reads the
    same files.
    """
    import pyarrow.dataset as ds

    index = Path(path)
    if index.is_dir():
        index = index / paths.in_point("patch_index")
    record = read_json(index)
    files = [index.parent / e["path"] for e in record.get("files", [])]
    missing = [f for f in files if not f.exists()]
    if missing:
        raise CausalKLError(index, "files", f"{len(missing)} listed files missing ({preview([str(m) for m in missing])})",
                            f"rebuild them: snakemake {index}")
    return ds.dataset([str(f) for f in files], schema=PATCH.schema(), format="parquet")


def read_per_site(path: str | Path, columns: list[str] | tuple[str, ...] | None = None):
    """``PER_SITE`` as a DataFrame (one row per site of a route), only ``columns`` when given (an analysis reads a
    few of its ~40 columns, and rarely its strings)."""
    from causal_kl.contracts import PER_SITE

    parquet_schema(path, PER_SITE)
    return read_parquet(path, columns=list(columns) if columns is not None else None).to_pandas()


def read_geometry(path: str | Path):
    """``GEOMETRY`` as a DataFrame (one row per site)."""
    return read_parquet(path, GEOMETRY).to_pandas()


def read_json(path: str | Path, fix: str | None = None) -> dict:
    """The JSON object in a file; a missing or broken one, or one that holds no object, is a one-line error naming
    it. ``fix`` says how to repair it (an SAE's config: re-save it); None: a file the pipeline writes (build it, or
    delete it and rerun)."""
    path = Path(path)
    if not path.exists():
        raise CausalKLError(path, None, "file not found", fix or "build it with snakemake")
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CausalKLError(path, None, f"not valid JSON ({e})", fix or "delete the file and rerun snakemake") from e
    if not isinstance(obj, dict):
        raise CausalKLError(path, None, "is not a JSON object", fix or "delete the file and rerun snakemake")
    return obj
