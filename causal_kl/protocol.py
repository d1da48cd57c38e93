"""What a model server and its clients share: the wire format, the identity a client requires of a server, where a
server listens and is registered, and the errors a client raises.

Protocol (Unix stream socket in the abstract namespace ``\\0causal-kl/<uid>/<scope>/<key>``, peers of another uid
refused): frames of a 4-byte big-endian length + UTF-8 JSON. ``hello`` -> identity; ``run`` -> ``started``, ``log``*,
then ``done`` | ``error``; ``status``; ``adopt``; ``shutdown``. Registry: one JSON file per server under
``<runtime dir>/<scope>/servers/`` (pid, slot, owner, socket, log, workdir). The server is ``causal_kl.server``, the
client ``causal_kl.client``; neither imports the other, and this module imports neither torch nor transformers.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import socket
import struct
import sys
import threading
from pathlib import Path
from typing import Any

from causal_kl import gpu, procs
from causal_kl.errors import CausalKLError

PROTOCOL = 1
IDLE_ENV = "CAUSAL_KL_SERVER_IDLE"
DEFAULT_IDLE_S = 600.0
KEEP_ENV = "CAUSAL_KL_SERVER_KEEP"
HANDOVER_ENV = "CAUSAL_KL_SERVER_HANDOVER"
DEFAULT_HANDOVER_S = 30.0
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%H:%M:%S"
MAX_FRAME = 1 << 30


# ----------------------------------------------------------------------------- errors
class ServerError(CausalKLError):
    """The model server died, could not start, or answered something a client must not accept."""

    def __init__(self, problem: str, log_path: str | None, fix: str = "rerun: the next job starts a fresh server; "
                 "if it fails again, read the server log"):
        super().__init__(log_path, "model server", problem, fix)


class RemoteJobError(RuntimeError):
    """A job function raised something other than ``CausalKLError`` inside the server.

    ``str()`` is one line; ``remote_traceback`` is the server-side traceback (also in the job's
    log and the server's log).
    """

    def __init__(self, message: str, remote_traceback: str = ""):
        super().__init__(" ".join(message.split()))
        self.remote_traceback = remote_traceback


# ----------------------------------------------------------------------------- identity
_SOURCE_DIGEST: str | None = None


def source_digest() -> str:
    """sha256 over causal_kl's own ``.py`` files (catches edits a ``-dirty`` code version does not)."""
    global _SOURCE_DIGEST
    if _SOURCE_DIGEST is None:
        root = Path(__file__).resolve().parent
        h = hashlib.sha256()
        for f in sorted(root.rglob("*.py")):
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
        _SOURCE_DIGEST = h.hexdigest()[:16]
    return _SOURCE_DIGEST


def identity() -> dict[str, Any]:
    """What a client requires of a server, and a server reports of itself."""
    from causal_kl import code_version

    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = None
    return {"protocol": PROTOCOL, "code_version": code_version(), "source": source_digest(), "torch": torch_version,
            "python": sys.executable}


# ----------------------------------------------------------------------------- registry
def server_key(owner: procs.Owner, slot: str) -> str:
    return f"{owner.pid}-{owner.start}-{slot}"


def step_scope() -> str:
    step = procs.slurm_step()  # looked up at call time: a test stands in a job step's cgroup
    return gpu.scope() + (f"-step{step}" if step not in (None, "batch", "extern") else "")


def registry_dir(scope: str | None = None) -> Path:
    d = gpu.runtime_dir() / (scope or step_scope()) / "servers"
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    return d


def socket_name(key: str, scope: str | None = None) -> str:
    return f"\0causal-kl/{os.getuid()}/{scope or step_scope()}/{key}"


def list_servers(all_scopes: bool = True, clean: bool = True) -> list[dict]:
    """Registry entries of this user's servers (every scope, or this one), each with ``alive``; dead ones removed with ``clean``."""
    root = gpu.runtime_dir()
    dirs = [d / "servers" for d in sorted(root.iterdir()) if (d / "servers").is_dir()] if all_scopes else [registry_dir()]
    out = []
    for d in dirs:
        for f in sorted(d.glob("*.json")):
            try:
                rec = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            rec["alive"] = procs.pid_alive(rec["pid"], rec.get("start"))
            rec["registry_file"] = str(f)
            if not rec["alive"] and clean:
                with contextlib.suppress(OSError):
                    f.unlink()
            out.append(rec)
    return out


def write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- framing
def send_frame(sock: socket.socket, obj: dict, lock: threading.Lock | None = None) -> None:
    data = json.dumps(obj, default=json_default).encode()
    frame = struct.pack(">I", len(data)) + data
    if lock is None:
        sock.sendall(frame)
    else:
        with lock:
            sock.sendall(frame)


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def recv_frame(sock: socket.socket) -> dict | None:
    """The next frame, None on a clean end of stream."""
    head = _recv_exact(sock, 4)
    if head is None:
        return None
    (n,) = struct.unpack(">I", head)
    if n > MAX_FRAME:
        raise ConnectionError(f"frame of {n} bytes")
    body = _recv_exact(sock, n)
    if body is None:
        return None
    return json.loads(body)


def json_default(o: Any) -> Any:
    if hasattr(o, "item") and callable(o.item):  # numpy / torch scalars
        return o.item()
    if hasattr(o, "tolist") and callable(o.tolist):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def connect(name: str, timeout_s: float | None = None) -> socket.socket | None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout_s if timeout_s is not None else 10.0)
    try:
        s.connect(name)
    except (ConnectionRefusedError, FileNotFoundError):
        s.close()
        return None
    s.settimeout(None)
    return s
