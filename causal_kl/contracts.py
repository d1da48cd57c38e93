"""Data contracts: the column names and dtypes of every parquet file passed between rules.

Writers, readers and tests import these; nothing else spells out a column list.
Vectors are fixed-size lists of float32 (``VECTOR``), their width the model's ``d``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from causal_kl.conditions import ERROR_FLOORS, MEASURED
from causal_kl.errors import CausalKLError

VECTOR = "fixed_size_list<float32>[d]"
"""Marker for a vector column; ``Contract.schema(d)`` resolves it to ``pa.list_(pa.float32(), d)``."""

CATEGORY = pa.dictionary(pa.int32(), pa.string())
"""A string column of few distinct values (a route, a condition), dictionary-encoded: in Arrow and on disk each row
holds an index, pandas reads it as a ``category`` (no Python string per row)."""


@dataclass(frozen=True)
class Contract:
    name: str
    columns: tuple[tuple[str, object], ...]
    doc: str = ""

    @property
    def names(self) -> list[str]:
        return [c for c, _ in self.columns]

    def schema(self, d: int | None = None) -> pa.Schema:
        fields = []
        for col, typ in self.columns:
            if typ == VECTOR:
                if d is None:
                    raise ValueError(f"contract {self.name}: vector width d is required for {col}")
                typ = pa.list_(pa.float32(), d)
            fields.append(pa.field(col, typ))
        return pa.schema(fields)

    def check(self, table: pa.Table | pa.Schema, path: str | Path, d: int | None = None) -> None:
        """Raise a CausalKLError naming the file and column when ``table`` (or a file's schema) breaks the contract."""
        schema = table if isinstance(table, pa.Schema) else table.schema
        missing = [c for c in self.names if c not in schema.names]
        if missing:
            raise CausalKLError(
                path, missing[0], f"column missing from {self.name} table (has {schema.names})",
                f"write the file with the columns {self.names}",
            )
        for col, typ in self.columns:
            actual = schema.field(col).type
            if typ == VECTOR:
                if not pa.types.is_fixed_size_list(actual) and not pa.types.is_list(actual):
                    raise CausalKLError(path, col, f"expected a vector column, found {actual}",
                                        "store vectors as fixed-size lists of float32")
                if d is not None and pa.types.is_fixed_size_list(actual) and actual.list_size != d:
                    raise CausalKLError(path, col, f"vector width {actual.list_size} != model width {d}",
                                        "use vectors of the model's hidden size for the configured layer")


SITES = Contract(
    "sites",
    (
        ("site_id", pa.int64()),
        ("doc_id", pa.string()),
        ("position", pa.int64()),
        ("token_id", pa.int64()),
        ("token", pa.string()),  # the site's token decoded alone (token classes are read from it)
        ("next_token_id", pa.int64()),  # -1 when the document ends at the site
        ("shard", pa.int64()),
    ),
    "one row per site, in stage-0 order; site_id is the row index",
)

DOCS = Contract(
    "docs",
    (
        ("doc_id", pa.string()),
        ("row", pa.int64()),
        ("n_tokens", pa.int64()),  # tokens of the document after truncation to max_length
        ("input_ids", pa.list_(pa.int32())),  # the document's n_tokens tokens (truncated to sites.max_length)
    ),
    "one row per document that has at least one site",
)

GOLD = Contract(
    "gold",
    (("site_id", pa.int64()), ("layer", pa.int64()), ("activation", VECTOR)),
    "the output of block L at each site's position",
)

REEXTRACT = Contract(
    "reextract",
    (("site_id", pa.int64()), ("cos", pa.float64())),
    "cos(stored gold, re-extracted gold) per site",
)

RECON = Contract(
    "recon",
    (("site_id", pa.int64()), ("reconstruction", VECTOR)),
    "a route's reconstruction per site, at the norm the route produced it",
)

CONDITION_CHOICES = Contract(
    "condition_choices",
    (
        ("site_id", pa.int64()),
        ("same_doc_source", pa.int64()),  # site_id whose gold is used, -1 when the site has no sibling
        ("cross_doc_source", pa.int64()),
    ),
    "the seeded resample choices, recorded so a rerun is bit-identical",
)

EVAL_MEAN = Contract(
    "eval_mean",
    (("mean", VECTOR), ("n", pa.int64())),
    "one row: the mean gold over the eval set (the `mean` condition) and the number of golds averaged",
)

NOISE_DIRECTIONS = Contract(
    "noise_directions",
    (("site_id", pa.int64()), ("direction", VECTOR)),
    "the seeded uniform unit direction of each site's matched noise, recorded so a rerun is bit-identical",
)

PATCH = Contract(
    "patch",
    (
        ("site_id", pa.int64()),
        ("route", CATEGORY),  # "" for the route-independent floors
        ("condition", CATEGORY),
        ("offset", pa.int32()),  # from the splice's last position; negative: inside a span
        ("kl", pa.float32()),
        ("ce", pa.float32()),
        ("delta_ce", pa.float32()),
        ("span", pa.int32()),  # positions spliced at once, p .. p+span-1 (1: the single-site splice)
    ),
    "KL(clean||patched), CE and delta-CE per site, condition, span and offset (offsets past the document's end absent)",
)

GEOMETRY = Contract(
    "geometry",
    (
        ("site_id", pa.int64()),
        ("cos", pa.float64()),
        ("direction_mse", pa.float64()),
        ("gold_norm", pa.float64()),
        ("recon_norm", pa.float64()),
        ("noise_norm", pa.float64()),  # ||recon_goldnorm - gold||, the matched-noise error norm
    ),
    "per-site geometry of a route's reconstruction against the gold",
)

ERROR_NORMS = Contract(
    "error_norms",
    (("site_id", pa.int64()), *((c, pa.float64()) for c in ERROR_FLOORS)),
    "per site, the norm of the error ||v - g|| each route-independent floor places at (L, p) (NaN: no same-doc sibling)",
)

PER_SITE = Contract(
    "per_site",
    (
        ("site_id", pa.int64()),
        ("doc_id", pa.string()),
        ("token_id", pa.int64()),
        ("token", pa.string()),
        ("ce0_clean", pa.float64()),
        ("cos", pa.float64()),
        ("direction_mse", pa.float64()),
        ("gold_norm", pa.float64()),
        ("recon_norm", pa.float64()),
        ("noise_norm", pa.float64()),
        *((f"{k}_{c}", pa.float64()) for c in MEASURED for k in ("kl0", "dce0")),
        *((f"err_{c}", pa.float64()) for c in MEASURED),
    ),
    "a route's sites at offset 0: KL, delta-CE and error norm of every condition (NaN where a site lacks it), geometry",
)

SPAN_GOLD = Contract(
    "span_gold",
    (("site_id", pa.int64()), ("j", pa.int32()), ("activation", VECTOR)),
    "a span's extra positions: the output of block L at position + j of each site whose span fits its document, "
    "j = 1 .. k-1 (j = 0 is the site's own gold, in GOLD)",
)

SPAN_RECON = Contract(
    "span_recon",
    (("site_id", pa.int64()), ("j", pa.int32()), ("reconstruction", VECTOR)),
    "a route's reconstruction at a span's extra positions (j = 1 .. k-1); j = 0 is the site's RECON row",
)

SPAN_NOISE = Contract(
    "span_noise",
    (("site_id", pa.int64()), ("j", pa.int32()), ("direction", VECTOR)),
    "the seeded unit direction of the matched noise at a span's extra positions (j = 1 .. k-1), seeded by "
    "(seed, site_id, j); j = 0 is the site's NOISE_DIRECTIONS row",
)

EXPLANATIONS = Contract(
    "explanations",
    (("site_id", pa.int64()), ("explanation", pa.string())),
    "a text explanation per site (NLA AV output, read by nla_ar)",
)

ALL = {c.name: c for c in (SITES, DOCS, GOLD, REEXTRACT, RECON, CONDITION_CHOICES, EVAL_MEAN, NOISE_DIRECTIONS, PATCH,
                           GEOMETRY, ERROR_NORMS, PER_SITE, SPAN_GOLD, SPAN_RECON, SPAN_NOISE, EXPLANATIONS)}
