"""Atomic writes, provenance metadata, vector columns, and one reader per data contract.

Every file this package writes goes to a temporary name beside its target and is renamed
into place, so a killed job never leaves a half-written output. Parquet files carry a
``causal_kl`` metadata entry: config hash, model, code version, what made them.

Readers (``read_sites``, ``read_docs``, ``read_gold``, ``read_recon``, ``read_choices``,
``read_mean``, ``read_noise``, ``read_patch``, ``read_geometry``): one per contract of
``causal_kl.contracts``, each checking the contract with one-line errors; and
``vectors_for_sites``, the one way to take "the vectors of these site ids, in this order".
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from causal_kl import __version__
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


def code_version() -> str:
    """Package version plus the git commit of the checkout it runs from, when there is one."""
    here = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(here), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


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


def fingerprint(path: str | Path, cache_file: str | Path | None = DIGEST_CACHE) -> str:
    """What an external input is, by content: the sha256 of a file; for a folder (a model checkpoint),
    a digest of every file's name, size and modification time and of the content of its small files
    (config.json, tokenizer files), so that replaced weights change it without re-reading 50 GB.

    Rules pass this as a param, so replacing a file behind the same path reruns what read it.
    Digests of unchanged files come from ``cache_file``.
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


def read_parquet(path: str | Path, contract: Contract | None = None, d: int | None = None,
                 columns: list[str] | None = None) -> pa.Table:
    """Read a parquet file with a clear error when it is missing or breaks ``contract``."""
    path = Path(path)
    if not path.exists():
        raise CausalKLError(path, None, "file not found", "check the path in the config, or build it with snakemake")
    try:
        table = pq.read_table(path, columns=columns)
    except (pa.ArrowInvalid, OSError) as e:
        raise CausalKLError(path, None, f"not a readable parquet file ({str(e).splitlines()[0]})",
                            "delete it and rerun snakemake (a plain rerun keeps it: its date looks current), "
                            "or point the config at a parquet file") from e
    if contract is not None:
        contract.check(table, path, d)
    return table


def read_provenance(path: str | Path) -> dict[str, Any]:
    md = pq.read_schema(path).metadata or {}
    raw = md.get(PROVENANCE_KEY)
    return json.loads(raw) if raw else {}


def concat_parquet(paths: list[str | Path], out: str | Path, contract: Contract | None = None,
                   d: int | None = None, meta: dict[str, Any] | None = None) -> pa.Table:
    """Concatenate per-shard files (same contract) into one, atomically."""
    tables = [read_parquet(p, contract, d) for p in paths]
    tables = [t.replace_schema_metadata(None) for t in tables]
    if tables:
        table = pa.concat_tables(tables, promote_options="default")
    else:
        table = contract.schema(d).empty_table() if contract else pa.table({})
    write_parquet(out, table, contract, d, meta)
    return table


# ---------------------------------------------------------------------------- one reader per contract
def check_vectors(vectors: np.ndarray, path: str | Path, field: str, d: int | None = None) -> None:
    """Width and finiteness of a ``[n, d]`` vector block, with a one-line error."""
    if vectors.ndim != 2:
        raise CausalKLError(path, field, f"expected one vector per row, got shape {vectors.shape}", "store [n, d] vectors")
    if d is not None and vectors.shape[1] != d:
        raise CausalKLError(path, field, f"vector width {vectors.shape[1]} != model width {d}",
                            "use vectors of the model's hidden size at the configured layer")
    bad = ~np.isfinite(vectors).all(axis=1)
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
    t = read_parquet(path, contract, d)
    vec = arrow_to_vectors(t[column], path, column)
    check_vectors(vec, path, column, d)
    return np.asarray(t["site_id"].to_numpy(), dtype=np.int64), vec


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


def read_mean(path: str | Path) -> np.ndarray:
    """The eval-set mean gold ``[d]`` (float32) from ``conditions/mean.parquet``."""
    t = read_parquet(path, EVAL_MEAN)
    return arrow_to_vectors(t["mean"], path, "mean")[0]


def read_patch(path: str | Path | list, route: str | None = None, offsets: list[int] | None = None):
    """``PATCH`` rows (a DataFrame) of the floors and, when given, one route; optionally only some offsets.

    ``path`` is one PATCH file or several (the floors' and a route's aggregate). A route's own rows of
    floor conditions (there should be none) are dropped, so each (site, condition, offset) appears once.
    A route file without rows is an error unless its provenance says why the route was skipped (then the
    floors come back alone).
    """
    import pyarrow.compute as pc

    from causal_kl.conditions import ROUTE_CONDITIONS

    paths = list(path) if isinstance(path, (list, tuple)) else [path]
    table = pa.concat_tables([read_parquet(p, PATCH).replace_schema_metadata(None) for p in paths])
    path = paths[-1]
    mask = pc.equal(table["route"], "")
    if route is not None:
        mask = pc.or_(mask, pc.equal(table["route"], route))
    if offsets is not None:
        mask = pc.and_(mask, pc.is_in(table["offset"], value_set=pa.array(list(offsets), pa.int32())))
    df = table.filter(mask).to_pandas()
    if route is not None:
        df = df[~((df["route"] == route) & ~df["condition"].isin(ROUTE_CONDITIONS))]
        if not df["route"].eq(route).any() and not read_provenance(path).get("skipped"):
            # (a route skipped for a span, e.g. no vectors at its extra positions, says so in its provenance)
            raise CausalKLError(path, "route", f"no rows for route '{route}'",
                                f"delete it and rebuild it: snakemake {path}")
    if not df["route"].eq("").any():
        raise CausalKLError(path, "route", "no floor rows (route \"\")", "patch the floors first")
    return df


def read_geometry(path: str | Path):
    """``GEOMETRY`` as a DataFrame (one row per site)."""
    return read_parquet(path, GEOMETRY).to_pandas()


def read_json(path: str | Path) -> dict:
    """A JSON file the pipeline wrote, as a dict; a missing or broken one is a one-line error."""
    path = Path(path)
    if not path.exists():
        raise CausalKLError(path, None, "file not found", "build it with snakemake")
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CausalKLError(path, None, f"not valid JSON ({e.msg})", "delete the file and rerun snakemake") from e
    return obj if isinstance(obj, dict) else {"value": obj}
