"""The demo corpus: English text that ships with Python itself, packed into documents.

Sources, in a fixed order: the ``pydoc_data.topics`` help topics (sorted by topic name),
then the module, class and function docstrings of every pure-Python stdlib module
(files sorted by path, docstrings in source order). The docstrings are read with ``ast``
from the source files, so no module is imported (``antigravity`` would open a browser).
Consecutive texts are concatenated until a document reaches ``target_chars``; the
documents are then shuffled with a seeded RNG so the held-out rows (0-50) come from the
same distribution as the training rows.
"""

from __future__ import annotations

import ast
import functools
import logging
import random
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from causal_kl.errors import CausalKLError
from causal_kl.io import provenance, write_parquet

log = logging.getLogger(__name__)

COLUMN = "content"
SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})


@dataclass(frozen=True)
class CorpusConfig:
    """Knobs of the demo corpus (``demo.corpus`` in the config)."""

    target_chars: int = 1500  # a document is closed once it has at least this many characters
    max_chars: int = 4000  # longer texts are split at paragraph breaks to stay under this
    min_text_chars: int = 40  # shorter docstrings ("Return self.") are skipped
    seed: int = 0  # shuffles the packed documents
    min_docs: int = 300  # rows 0-50 eval, 50-250 route training, 250+ model training


def pydoc_topic_texts() -> Iterator[str]:
    """The help topics of ``pydoc_data.topics``, sorted by topic name."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield topics[name]


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path | None = None) -> list[Path]:
    """The stdlib's ``.py`` files (tests and site-packages excluded), sorted by relative path."""
    root = root or stdlib_root()
    files = [p for p in root.rglob("*.py") if not SKIP_DIRS.intersection(p.relative_to(root).parts)]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def module_docstrings(source: str, module: str) -> Iterator[str]:
    """``"{qualified name}\\n{docstring}"`` for the module and each class/function, in source order."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return

    def visit(node: ast.AST, qualname: str) -> Iterator[str]:
        doc = ast.get_docstring(node, clean=True)
        if doc:
            yield f"{qualname}\n{doc}"
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                yield from visit(child, f"{qualname}.{child.name}")

    yield from visit(tree, module)


def stdlib_docstring_texts(root: Path | None = None) -> Iterator[str]:
    root = root or stdlib_root()
    for path in stdlib_files(root):
        rel = path.relative_to(root).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        try:
            source = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        yield from module_docstrings(source, ".".join(parts))


def source_texts(min_text_chars: int = 40) -> tuple[str, ...]:
    """Every source text in the fixed order: pydoc topics, then stdlib docstrings (cached per process)."""
    return tuple(t for t in _all_source_texts() if len(t) >= min_text_chars)


@functools.lru_cache(maxsize=1)
def _all_source_texts() -> tuple[str, ...]:
    return tuple(text.strip() for text in _chain(pydoc_topic_texts(), stdlib_docstring_texts()))


def _chain(*its: Iterator[str]) -> Iterator[str]:
    for it in its:
        yield from it


def split_long(text: str, max_chars: int) -> list[str]:
    """Split ``text`` at blank lines (then lines, then hard cuts) into pieces of at most ``max_chars``."""
    if len(text) <= max_chars:
        return [text]
    pieces: list[str] = []
    current = ""
    for para in _units(text, max_chars):
        if current and len(current) + 2 + len(para) > max_chars:
            pieces.append(current)
            current = para
        else:
            current = f"{current}\n\n{para}" if current else para
    if current:
        pieces.append(current)
    return pieces


def _units(text: str, max_chars: int) -> Iterator[str]:
    for para in text.split("\n\n"):
        if len(para) <= max_chars:
            yield para
            continue
        for line in para.split("\n"):
            for i in range(0, len(line), max_chars):
                yield line[i:i + max_chars]


def pack_documents(texts: Iterable[str], target_chars: int, max_chars: int) -> list[str]:
    """Concatenate consecutive texts (blank line between) into documents of >= ``target_chars``.

    A trailing remainder shorter than ``target_chars`` is dropped. No document exceeds
    ``max_chars + target_chars``.
    """
    if not 0 < target_chars <= max_chars:
        raise CausalKLError("config", "demo.corpus.target_chars", f"target_chars={target_chars}, max_chars={max_chars}",
                            "use 0 < target_chars <= max_chars")
    docs: list[str] = []
    parts: list[str] = []
    size = 0
    for text in texts:
        for piece in split_long(text, max_chars):
            size += len(piece) + (2 if parts else 0)  # == len("\n\n".join(parts))
            parts.append(piece)
            if size >= target_chars:
                docs.append("\n\n".join(parts))
                parts, size = [], 0
    return docs


def build_corpus_texts(cfg: CorpusConfig = CorpusConfig()) -> list[str]:
    """The demo documents, packed and shuffled (deterministic for a given Python build and seed)."""
    docs = pack_documents(source_texts(cfg.min_text_chars), cfg.target_chars, cfg.max_chars)
    random.Random(cfg.seed).shuffle(docs)
    if len(docs) < cfg.min_docs:
        raise CausalKLError("config", "demo.corpus.target_chars",
                            f"only {len(docs)} documents from this Python's docs (need {cfg.min_docs})",
                            "lower demo.corpus.target_chars")
    return docs


def build_corpus(out: str | Path, cfg: CorpusConfig = CorpusConfig()) -> int:
    """Write the demo corpus parquet (one document per row, column ``content``); return its row count."""
    docs = build_corpus_texts(cfg)
    meta = provenance(kind="demo_corpus", python=sys.version.split()[0], stdlib=str(stdlib_root()),
                      corpus_config=cfg.__dict__)
    write_parquet(out, {COLUMN: docs}, meta=meta)
    log.info("demo corpus: %d documents, %d characters -> %s", len(docs), sum(map(len, docs)), out)
    return len(docs)
