"""The one error type users see: a single line naming the file, the field and the fix."""

from __future__ import annotations

from pathlib import Path


class CausalKLError(Exception):
    """A user-facing error: ``<file>: <field>: <problem>. Fix: <fix>``, on one line.

    Raised for bad input (config, corpus, vectors, checkpoints) before any expensive work,
    so that nothing already computed is lost.
    """

    def __init__(self, file: str | Path | None, field: str | None, problem: str, fix: str):
        self.file = str(file) if file is not None else None
        self.field = field
        self.problem = problem
        self.fix = fix
        parts = []
        if self.file:
            parts.append(self.file)
        if field:
            parts.append(field)
        head = ": ".join(parts)
        msg = f"{head}: {problem}" if head else problem
        msg = msg.rstrip(".") + f". Fix: {fix}"
        super().__init__(" ".join(msg.split()))  # always one line
