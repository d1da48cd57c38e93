"""What a checkpoint folder holds on disk, read without torch: its weight files, their tensors, its fingerprint.

The model server's clients fingerprint a model before asking for it, and they must stay light
(no ``import torch``), so everything here is plain Python: the safetensors header is 8 bytes of
little-endian length followed by a JSON table ``{name: {dtype, shape, data_offsets}}``.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from causal_kl.errors import CausalKLError

SAFETENSORS_DTYPES = {
    "F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
    "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1),
    "U64": ("uint64", 8), "U32": ("uint32", 4), "U16": ("uint16", 2), "U8": ("uint8", 1), "BOOL": ("bool", 1),
    "F8_E4M3": ("float8_e4m3fn", 1), "F8_E5M2": ("float8_e5m2", 1),
}
"""The one table of safetensors dtypes: name -> (torch's name for it, bytes per element). The header check
below reads the widths; the fast loader (``causal_kl.models``) the torch names."""

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
BIN_NAMES = ("pytorch_model.bin.index.json", "pytorch_model.bin")


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors file: where its bytes are (absolute file offset) and what they are."""

    key: str
    file: Path
    dtype: str  # safetensors name: "F32", "BF16", ...
    shape: tuple[int, ...]
    offset: int  # absolute byte offset in ``file``
    nbytes: int

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


def read_safetensors_header(path: str | Path, fix: str) -> dict[str, dict]:
    """The header of a safetensors file (8-byte little-endian length, then JSON), no weights read, checked against
    the file: every tensor's ``data_offsets`` span its dtype x shape, and the file is exactly the header plus the
    data the offsets name (safetensors refuses any other size). A truncated copy or download is one line here,
    before any weight is read. ``fix`` is the error line's fix for an unreadable file (how to re-save it)."""
    return _checked_header(Path(path), fix)[0]


def _checked_header(path: Path, fix: str) -> tuple[dict[str, dict], int]:
    """``read_safetensors_header``'s header and where the data starts (byte ``8 + header length``)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise ValueError("file shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > 100_000_000 or n > size - 8:
                raise ValueError(f"header length {n} does not fit the file")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        end = 0
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, stop = (int(o) for o in info["data_offsets"])
            shape = [int(s) for s in info["shape"]]
            width = SAFETENSORS_DTYPES.get(str(info.get("dtype")), (None, None))[1]
            if stop < start or (width is not None and stop - start != width * math.prod(shape)):
                raise ValueError(f"tensor {name}: data_offsets {[start, stop]} do not hold {info.get('dtype')} {shape}")
            end = max(end, stop)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CausalKLError(path, None, f"not a readable safetensors file ({str(e).splitlines()[0]})", fix) from e
    expected = 8 + n + end
    if size < expected:
        raise CausalKLError(path, None, f"truncated: its header's tensors end at byte {expected:,} but the file has "
                            f"{size:,} bytes ({expected - size:,} missing)",
                            "copy or download the file again (a transfer that stopped early leaves it cut short)")
    if size > expected:
        raise CausalKLError(path, None, f"{size - expected:,} bytes past the end of its header's last tensor "
                            f"(the file has {size:,} bytes, the header names {expected:,})",
                            "copy or download the file again (safetensors refuses a file of any other size)")
    return header, 8 + n


def safetensors_entries(path: str | Path) -> dict[str, TensorEntry]:
    """The tensors of one model ``.safetensors`` file (its checked header), in file order."""
    path = Path(path)
    header, base = _checked_header(path, "re-save the model with save_pretrained")
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        start, end = info["data_offsets"]
        out[key] = TensorEntry(key, path, info["dtype"], tuple(int(s) for s in info["shape"]), base + int(start), int(end) - int(start))
    return dict(sorted(out.items(), key=lambda kv: kv[1].offset))


def weight_files(path: str | Path) -> tuple[str, list[Path]]:
    """``("safetensors" | "bin" | "none", files)`` of a local checkpoint folder, the way transformers picks them.

    A safetensors index wins over a single file; ``.bin`` files are only reported (the fast
    loader does not read them).
    """
    path = Path(path)
    index = path / INDEX_NAME
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        return "safetensors", [path / f for f in sorted(set(weight_map.values()))]
    if (path / SINGLE_NAME).is_file():
        return "safetensors", [path / SINGLE_NAME]
    bins = [path / n for n in BIN_NAMES if (path / n).is_file()]
    if bins:
        return "bin", bins
    return "none", []


def checkpoint_tensors(path: str | Path) -> dict[str, TensorEntry]:
    """Every tensor of a local safetensors checkpoint (all shards), keyed by checkpoint name."""
    kind, files = weight_files(path)
    if kind != "safetensors":
        raise CausalKLError(path, "weights", f"no safetensors weights ({kind})", "re-save the model with save_pretrained (safetensors)")
    out: dict[str, TensorEntry] = {}
    for f in files:
        if not f.is_file():
            raise CausalKLError(f, None, "a shard named in the safetensors index is missing", "re-download or re-save the model")
        out.update(safetensors_entries(f))
    return out


def stat_fingerprint(path: str | Path) -> str:
    """A short id of what a model folder holds: config.json's bytes, each weight file's name, size and mtime.

    Cheap (a few ``stat`` calls and one small file read) so it can be checked on every request;
    rewriting any weight file or the config changes it. A hub id that is not a local folder is
    fingerprinted by its name only. (``io.content_fingerprint`` is the rules' one: by content.)
    """
    p = Path(path)
    if not p.exists():
        return "hub:" + str(path)
    h = hashlib.sha256()
    cfg = p / "config.json"
    h.update(cfg.read_bytes() if cfg.is_file() else b"<no config.json>")
    names = [INDEX_NAME, *BIN_NAMES]
    _, files = weight_files(p)
    for f in [p / n for n in names] + files:
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()[:16]


def resolved(path: str | Path) -> str:
    """The canonical spelling of a model path: absolute and symlink-free for a local folder, as given for a hub id."""
    p = Path(path)
    return str(p.resolve()) if p.exists() else str(path)
