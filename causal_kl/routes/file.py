"""Route kind ``file``: reconstructions computed elsewhere.

Accepted formats (chosen by ``format``, or by the file's extension):

- parquet: a site key (``site_id``; or ``doc_id`` + ``position``; or NLA's ``doc_id`` +
  ``n_raw_tokens`` = position + 1) and a vector column named by ``column`` (default
  ``reconstruction``), a list of floats per row;
- ``.npy``: a ``[n, d]`` array, with a sidecar ``site_ids`` (a ``.npy`` of ``n`` integer site
  ids; default ``<file stem>.site_ids.npy`` beside it);
- safetensors: a ``[n, d]`` tensor under ``column`` and a ``[n]`` integer tensor ``site_id``.

Width, NaN/inf, missing, extra and duplicate sites are checked; each is a one-line error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from causal_kl.errors import CausalKLError
from causal_kl.io import arrow_to_vectors, check_vectors, read_parquet, vectors_for_sites
from causal_kl.routes.base import site_ids_for

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".npy": "npy", ".safetensors": "safetensors"}


def file_format(path: str | Path, fmt: str | None = None) -> str:
    if fmt and fmt != "auto":
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise CausalKLError(path, "format", f"cannot tell the format from the extension '{suffix}'",
                            "use .parquet, .npy or .safetensors, or set the route's format")
    return FORMATS[suffix]


def default_sidecar(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.stem + ".site_ids.npy")


def input_files(route: dict) -> list[str]:
    """The files a ``file`` route reads (for Snakemake's input list)."""
    files = [route["path"]]
    if file_format(route["path"], route.get("format")) == "npy":
        files.append(route.get("site_ids") or str(default_sidecar(route["path"])))
    return files


def load_vectors(route: dict, sites: pa.Table) -> tuple[np.ndarray, np.ndarray, str]:
    """Read a ``file`` route's vectors: ``(site_id [n], vectors [n, d], field name)`` in file order."""
    path = Path(route["path"])
    column = route.get("column") or "reconstruction"
    if not path.exists():
        raise CausalKLError(path, "path", "reconstruction file not found", "check the route's path")
    fmt = file_format(path, route.get("format"))
    if fmt == "parquet":
        table = read_parquet(path)
        if column not in table.column_names:
            raise CausalKLError(path, column, f"no vector column '{column}' (has {table.column_names})",
                                "set the route's column to the name of the vector column")
        ids = site_ids_for(table, sites, path)
        return ids, arrow_to_vectors(table.column(column), path, column), column
    if fmt == "npy":
        try:
            vectors = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise CausalKLError(path, "array", f"not a plain numeric .npy ({e})", "save with np.save of a float array") from e
        sidecar = Path(route.get("site_ids") or default_sidecar(path))
        if not sidecar.exists():
            raise CausalKLError(sidecar, "site_ids", "site-id sidecar not found",
                                f"save the site ids of the rows with np.save('{sidecar}', ids) or set the route's site_ids")
        ids = np.load(sidecar, allow_pickle=False)
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise CausalKLError(sidecar, "site_ids", f"expected a 1-d integer array, got {ids.dtype}{list(ids.shape)}",
                                "save one integer site id per row of the vectors")
        return ids.astype(np.int64), vectors, "array"
    if fmt == "safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        for key in (column, "site_id"):
            if key not in tensors:
                raise CausalKLError(path, key, f"tensor '{key}' not in the file (has {sorted(tensors)})",
                                    "store the vectors under the route's column and the ids under 'site_id'")
        return (tensors["site_id"].numpy().astype(np.int64).reshape(-1),
                tensors[column].float().numpy(), column)
    raise CausalKLError(path, "format", f"unknown format '{fmt}'", "use parquet, npy or safetensors")


def reconstruct(route: dict, sites: pa.Table, d: int) -> np.ndarray:
    """A ``file`` route's reconstructions ``[n_sites, d]`` in the order of ``sites``, every row checked."""
    want = np.asarray(sites.column("site_id").to_numpy(), dtype=np.int64)
    ids, vectors, field_name = load_vectors(route, sites)
    vectors = np.asarray(vectors)
    check_vectors(vectors, route["path"], field_name, d)
    recon = vectors_for_sites(ids, vectors, want, route["path"], field_name, exact=True,
                              fix="write a reconstruction for every site of the run's sites.parquet")
    return recon.astype(np.float32)
