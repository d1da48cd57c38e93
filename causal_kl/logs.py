"""Per-job logging for workflow scripts: everything goes to the job's log file and to stderr."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Sequence


FORMAT, DATE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"
"""A job log's line: what ``setup`` writes, and ``append`` after a server has written the rest."""


def append(log_path: str | None, level: str, message: str, name: str = "causal_kl") -> None:
    """Add one line, formatted as ``setup``'s, to the end of a job's log written by another process (a model or
    analysis server relaying the job's lines); nothing without a log."""
    if not log_path:
        return
    line = FORMAT % {"asctime": time.strftime(DATE_FORMAT), "levelname": level, "name": name, "message": message}
    with open(log_path, "a") as f:
        f.write(line + "\n")


def setup(log_paths: Sequence[str] | str | None, name: str = "causal_kl") -> logging.Logger:
    """Log INFO and above to the rule's ``log:`` file(s) and to stderr; return the package logger."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for h in list(root.handlers):
        root.removeHandler(h)
    fmt = logging.Formatter(FORMAT, DATE_FORMAT)
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
