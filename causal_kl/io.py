"""Atomic writes, provenance metadata and vector columns.

Every file this package writes goes to a temporary name beside its target and is renamed
into place, so a killed job never leaves a half-written output. Parquet files carry a
``causal_kl`` metadata entry: config hash, model, code version, what made them.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
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
from causal_kl.contracts import Contract
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
                            "regenerate the file or point the config at a parquet file") from e
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
