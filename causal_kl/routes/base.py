"""What every route kind shares: matching rows of external files to sites, writing ``RECON``, checking rows.

A route reads the eval sites (``SITES``) and golds (``GOLD``), and writes one ``RECON`` row per
site. External files (reconstructions, explanations) may name sites by ``site_id``, by
``doc_id`` + ``position``, or NLA-style by ``doc_id`` + ``n_raw_tokens`` (= position + 1);
``site_ids_for`` turns any of these into site ids with one-line errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from causal_kl.contracts import RECON
from causal_kl.errors import CausalKLError
from causal_kl.io import preview, write_parquet


def site_ids_for(table: pa.Table, sites: pa.Table, path: str | Path) -> np.ndarray:
    """The site id of each row of ``table``, keyed by ``site_id``, ``doc_id``+``position`` or ``doc_id``+``n_raw_tokens``.

    Rows naming a site that is not in the eval set, and duplicate rows, are errors.
    """
    cols = table.column_names
    if "site_id" in cols:
        ids = np.asarray(table.column("site_id").to_numpy(zero_copy_only=False), dtype=np.int64)
        key_name = "site_id"
        known = set(sites.column("site_id").to_pylist())
        keys = ids.tolist()
        lookup = {k: k for k in known}
    elif "doc_id" in cols and ("position" in cols or "n_raw_tokens" in cols):
        pos_col = "position" if "position" in cols else "n_raw_tokens"
        shift = 0 if pos_col == "position" else 1
        key_name = f"doc_id+{pos_col}"
        positions = [int(p) - shift for p in table.column(pos_col).to_pylist()]
        keys = list(zip(table.column("doc_id").to_pylist(), positions))
        lookup = dict(zip(zip(sites.column("doc_id").to_pylist(), sites.column("position").to_pylist()),
                          sites.column("site_id").to_pylist()))
    else:
        raise CausalKLError(path, "site_id", f"no site key column (has {cols})",
                            "add a site_id column, or doc_id with position (or NLA's n_raw_tokens = position + 1)")
    extra = [k for k in keys if k not in lookup]
    if extra:
        raise CausalKLError(path, key_name, f"{len(extra)} extra sites not in the eval set ({preview(extra)})",
                            "keep only rows for the sites of the run's sites.parquet, or point the route at the file made for this run")
    out = np.asarray([lookup[k] for k in keys], dtype=np.int64)
    uniq, counts = np.unique(out, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1].tolist()
        raise CausalKLError(path, key_name, f"{len(dup)} sites appear more than once (site ids {preview(dup)})",
                            "write one row per site")
    return out


def write_recon(path: str | Path, site_ids: np.ndarray, recon: np.ndarray, meta: dict[str, Any]) -> None:
    """Write a ``RECON`` table (one float32 vector per site) with its provenance record ``meta``."""
    table = {"site_id": np.asarray(site_ids, dtype=np.int64), "reconstruction": recon.astype(np.float32)}
    write_parquet(path, table, RECON, int(recon.shape[1]), meta=meta)


def check_train_rows(train_rows: tuple[int, int] | list[int], eval_rows: tuple[int, int] | list[int],
                     source: str = "config routes") -> tuple[int, int]:
    """A route's training rows ``[start, stop)``, checked non-empty and disjoint from the eval rows."""
    start, stop = (int(x) for x in train_rows)
    e0, e1 = (int(x) for x in eval_rows)
    if stop <= start:
        raise CausalKLError(source, "train_rows", f"empty row range [{start}, {stop})", "give [start, stop) with stop > start")
    if start < e1 and e0 < stop:
        raise CausalKLError(source, "train_rows",
                            f"training rows [{start}, {stop}) overlap the eval rows [{e0}, {e1}) of corpus.rows",
                            "train on rows disjoint from the eval documents")
    return start, stop
