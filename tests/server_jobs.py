"""Toy job functions for the model-server tests (run inside a server by ``run_remote``).

Each is an ordinary importable function taking JSON-able keyword arguments, like the real
``causal_kl`` job functions; the tests compare their results through a server with direct calls.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger("server_jobs")


def add(a: float, b: float) -> dict:
    """No model: arithmetic and the server's pid (to tell which process ran it)."""
    log.info("adding %s and %s", a, b)
    return {"sum": a + b, "pid": os.getpid()}


def model_logits(model_path: str, text: str, dtype: str = "float32", device: str = "cpu") -> dict:
    """Next-token logits of ``text`` from a model got through the process-wide cache."""
    import torch

    from causal_kl.models import get_model, load_count

    loaded = get_model(model_path, dtype=dtype, device=device)
    ids = torch.tensor([loaded.tokenizer(text).input_ids], device=loaded.device)
    with torch.no_grad():
        logits = loaded.model(input_ids=ids).logits[0, -1].float()
    return {"logits": logits.tolist(), "pid": os.getpid(), "loads": load_count(), "device": str(loaded.device),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


def fail_user(path: str) -> None:
    from causal_kl.errors import CausalKLError

    raise CausalKLError(path, "field", "something the user can fix", "fix it")


def fail_bug() -> None:
    return {}["missing"]


def slow(seconds: float, marker: str | None = None, log_every: float = 0.1) -> dict:
    """Sleeps in small steps, logging each; writes ``marker`` when it starts and ``marker.done`` if it finishes."""
    t = time.monotonic()
    if marker:
        Path(marker).write_text(str(os.getpid()))
    n = 0
    while time.monotonic() - t < seconds:
        time.sleep(log_every)
        n += 1
        log.info("still working (%d)", n)
    if marker:
        Path(marker + ".done").write_text("done")
    return {"steps": n, "pid": os.getpid(), "t0": t, "t1": time.monotonic()}


def write_file(path: str, text: str) -> str:
    """Relative paths resolve against the client's working directory."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)
    return os.path.abspath(path)


def quiet(seconds: float, marker: str) -> dict:
    """Like a long forward pass: no log line for ``seconds``; writes ``marker`` when it starts and ``marker.done`` at its end."""
    Path(marker).write_text(str(os.getpid()))
    time.sleep(seconds)
    Path(marker + ".done").write_text("done")
    return {"pid": os.getpid()}


def write_fields(out: str, layer: str, shard: str, provenance: dict) -> None:
    """A per-shard model job's shape: its fields and provenance written (as JSON) to its output, and the pid that ran it."""
    import json

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps({"layer": layer, "shard": shard, "provenance": provenance, "pid": os.getpid()}))



def bad_fields(out: str, layer: str, shard: str) -> None:
    """A job of write_fields' shape that finds its input bad (an analysis job through causal_kl.analysis_server)."""
    from causal_kl.errors import CausalKLError

    raise CausalKLError(f"in/shard_{shard}.parquet", "kl", "something the user can fix", "fix it")


def bug_fields(out: str, layer: str, shard: str) -> None:
    """A job of write_fields' shape with a bug."""
    return {}["missing"]


def analysis_fields(out: str, layer: str, shard: str, provenance: dict) -> None:
    """write_fields as an analysis job (no model: run in the job's process or causal_kl.analysis_server)."""
    write_fields(out, layer, shard, provenance)


def sleep_fields(out: str, layer: str, shard: str) -> None:
    """A job of write_fields' shape that writes its pid to ``out`` and then takes a minute."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(str(os.getpid()))
    time.sleep(60)


def scale(src: str, out: str, factor: float) -> dict:
    """A shard job in miniature: reads numbers from ``src``, writes them times ``factor`` to ``out`` atomically, logs."""
    from causal_kl.io import atomic_path

    values = [float(v) for v in Path(src).read_text().split()]
    log.info("scaling %d values of %s by %s", len(values), src, factor)
    with atomic_path(out) as tmp:
        Path(tmp).write_text(" ".join(repr(v * factor) for v in values))
    return {"n": len(values), "pid": os.getpid()}
