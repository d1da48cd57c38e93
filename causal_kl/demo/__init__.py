"""Offline demo assets: a corpus from text shipped with Python, a BPE tokenizer, a tiny Gemma-3.

Everything here runs without network access and is deterministic given the Python build
and the seed, so two builds of the demo give the same corpus, tokenizer and weights.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``path``; move it onto ``path`` only if the block succeeds.

    An existing ``path`` is replaced. The directory counterpart of ``causal_kl.io.atomic_path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
