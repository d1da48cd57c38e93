"""What every route kind shares: the job description, matching rows to sites, checking vectors.

A route reads the eval sites (``SITES``) and golds (``GOLD``), and writes one ``RECON`` row per
site. External files (reconstructions, explanations) may name sites by ``site_id``, by
``doc_id`` + ``position``, or NLA-style by ``doc_id`` + ``n_raw_tokens`` (= position + 1);
``site_ids_for`` turns any of these into site ids with one-line errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from causal_kl.config import config_hash
from causal_kl.contracts import RECON, SITES
from causal_kl.errors import CausalKLError
from causal_kl.gold import check_vectors as check_width_finite
from causal_kl.gold import read_gold
from causal_kl.io import provenance, read_parquet, write_parquet


@dataclass
class RouteJob:
    """One route's job: its name and config entry, the run config, and the files it reads and writes.

    ``explanations`` is an input for ``nla_ar`` and an output for ``text_channel`` and ``nla_av``.
    """

    name: str
    route: dict
    config: dict
    sites: Path
    gold: Path
    out: Path | None = None
    train_gold: Path | None = None
    explanations: Path | None = None

    @property
    def kind(self) -> str:
        return self.route["kind"]

    @property
    def source(self) -> str:
        """How errors name this route's config entry."""
        return f"config routes.{self.name}"

    @classmethod
    def from_snakemake(cls, smk: Any) -> "RouteJob":
        """Build a job from a Snakemake ``snakemake`` object (named inputs/outputs, ``params.route``)."""
        name = smk.wildcards.route
        inp, out = smk.input, smk.output

        def opt(obj, key):
            return Path(getattr(obj, key)) if key in obj.keys() else None

        return cls(
            name=name,
            route=dict(smk.config["routes"][name]),
            config=smk.config,
            sites=Path(inp.sites),
            gold=Path(inp.gold),
            out=opt(out, "recon"),
            train_gold=opt(inp, "train_gold"),
            explanations=opt(out, "explanations") or opt(inp, "explanations"),
        )


def read_sites(path: str | Path) -> pa.Table:
    return read_parquet(path, SITES)


def gold_for_sites(gold_path: str | Path, site_ids: np.ndarray) -> np.ndarray:
    """The golds of ``site_ids`` in that order, ``[n, d]``; a site without a gold is an error."""
    gold_ids, gold = read_gold(str(gold_path))
    index = {int(s): i for i, s in enumerate(gold_ids)}
    missing = [int(s) for s in site_ids if int(s) not in index]
    if missing:
        raise CausalKLError(gold_path, "site_id", f"{len(missing)} eval sites have no gold (first {missing[:5]})",
                            "rebuild the golds for the current sites (snakemake --forcerun gold)")
    return gold[[index[int(s)] for s in site_ids]]


def _preview(values: list) -> str:
    return ", ".join(str(v) for v in values[:3]) + (", ..." if len(values) > 3 else "")


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
        raise CausalKLError(path, key_name, f"{len(extra)} extra sites not in the eval set ({_preview(extra)})",
                            "keep only rows for the sites in results/{run}/sites.parquet, or point the route at the file made for this run")
    out = np.asarray([lookup[k] for k in keys], dtype=np.int64)
    uniq, counts = np.unique(out, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1].tolist()
        raise CausalKLError(path, key_name, f"{len(dup)} sites appear more than once (site ids {_preview(dup)})",
                            "write one row per site")
    return out


def check_vectors(site_ids: np.ndarray, vectors: np.ndarray, want_ids: np.ndarray, d: int,
                  path: str | Path, field_name: str) -> np.ndarray:
    """Check a ``[n, d]`` block of vectors against the eval sites; return it ordered as ``want_ids``.

    Errors (one line each): wrong width, NaN/inf, missing sites, extra sites, duplicates.
    """
    vectors = np.asarray(vectors)
    check_width_finite(vectors, str(path), field_name, d)
    if len(site_ids) != len(vectors):
        raise CausalKLError(path, field_name, f"{len(vectors)} vectors but {len(site_ids)} site ids",
                            "write exactly one site id per vector")
    index = {int(s): i for i, s in enumerate(site_ids)}
    if len(index) != len(site_ids):
        uniq, counts = np.unique(site_ids, return_counts=True)
        raise CausalKLError(path, "site_id", f"duplicate sites ({_preview(uniq[counts > 1].tolist())})",
                            "write one vector per site")
    want = set(int(s) for s in want_ids)
    extra = sorted(set(index) - want)
    if extra:
        raise CausalKLError(path, "site_id", f"{len(extra)} extra sites not in the eval set ({_preview(extra)})",
                            "keep only rows for the sites in results/{run}/sites.parquet")
    missing = [int(s) for s in want_ids if int(s) not in index]
    if missing:
        raise CausalKLError(path, "site_id", f"{len(missing)} eval sites missing ({_preview(missing)})",
                            "write a reconstruction for every site in results/{run}/sites.parquet")
    return vectors[[index[int(s)] for s in want_ids]].astype(np.float32)


def write_recon(job: RouteJob, site_ids: np.ndarray, recon: np.ndarray, **meta: Any) -> None:
    """Write a ``RECON`` table for ``job`` with provenance (route name, kind, config entry, ``meta``)."""
    d = int(recon.shape[1])
    table = {"site_id": np.asarray(site_ids, dtype=np.int64), "reconstruction": recon.astype(np.float32)}
    write_parquet(job.out, table, RECON, d, meta=route_provenance(job, **meta))


def route_provenance(job: RouteJob, **meta: Any) -> dict[str, Any]:
    return provenance(config_hash=config_hash(job.config), model=job.config["model"]["path"],
                      route=job.name, kind=job.kind, route_config=job.route, layer=job.config["model"]["layer"], **meta)


def train_rows(job: RouteJob) -> tuple[int, int]:
    """A route's training rows ``[start, stop)``, checked disjoint from the eval rows."""
    start, stop = (int(x) for x in job.route["train_rows"])
    e0, e1 = (int(x) for x in job.config["corpus"]["rows"])
    if stop <= start:
        raise CausalKLError(job.source, "train_rows", f"empty row range [{start}, {stop})", "give [start, stop) with stop > start")
    if start < e1 and e0 < stop:
        raise CausalKLError(job.source, "train_rows",
                            f"training rows [{start}, {stop}) overlap the eval rows [{e0}, {e1}) of corpus.rows",
                            "train on rows disjoint from the eval documents")
    return start, stop
