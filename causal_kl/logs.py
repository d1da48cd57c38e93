"""Per-job logging for workflow scripts: everything goes to the job's log file and to stderr."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Sequence


def setup(log_paths: Sequence[str] | str | None, name: str = "causal_kl") -> logging.Logger:
    """Log INFO and above to the rule's ``log:`` file(s) and to stderr; return the package logger."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for h in list(root.handlers):
        root.removeHandler(h)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    paths = [log_paths] if isinstance(log_paths, str) else list(log_paths or [])
    for p in paths:
        Path(p).parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(p, mode="w")
        fh.setFormatter(fmt)
        root.addHandler(fh)
    sh = logging.StreamHandler(sys.stderr)
    sh.setFormatter(fmt)
    root.addHandler(sh)
    for noisy in ("transformers", "datasets", "urllib3", "filelock", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return logging.getLogger(name)
