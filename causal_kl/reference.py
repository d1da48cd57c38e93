"""The reference write-up's published numbers (``reports/reference/``), and how they sit beside measured ones.

A production run (``causal_kl.config.show_reference``) shows each published value beside the
measured one with the difference; nothing else reads these files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

REFERENCE_DIR = Path(__file__).resolve().parent.parent / "reports" / "reference"
"""The write-up's published numbers (CSV/JSON), shown beside measured ones for production runs."""

REFERENCE_TABLES = ("conditions", "quartiles", "offsets", "token_classes")



def load_reference(directory: str | Path = REFERENCE_DIR) -> dict:
    """The write-up's published tables (DataFrames) and statistics (dict) from ``reports/reference``."""
    d = Path(directory)
    ref = {name: pd.read_csv(d / f"{name}.csv") for name in REFERENCE_TABLES if (d / f"{name}.csv").exists()}
    if (d / "stats.json").exists():
        ref["stats"] = json.loads((d / "stats.json").read_text())
    return ref


def with_reference(measured: pd.DataFrame, published: pd.DataFrame | None, key: str) -> pd.DataFrame:
    """Insert ``{col}_published`` and ``{col}_diff`` (measured − published) after each column both share."""
    if published is None:
        return measured
    pub = published.set_index(key)
    out = measured.copy()
    for col in [c for c in measured.columns if c in pub.columns and c != key]:
        vals = out[key].map(pub[col]).astype(np.float64)
        pos = out.columns.get_loc(col)
        # place after the column's own CI columns, if any
        while pos + 1 < len(out.columns) and out.columns[pos + 1] in (f"{col}_lo", f"{col}_hi"):
            pos += 1
        out.insert(pos + 1, f"{col}_published", vals)
        out.insert(pos + 2, f"{col}_diff", out[col].astype(np.float64) - vals)
    return out
