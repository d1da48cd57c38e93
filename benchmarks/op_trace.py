#!/usr/bin/env python
"""The patch paths' work as a list of aten calls, compared between two checkouts: a regression check the box's load cannot blur.

Records every aten operator the fast path (``patch_documents(..., "fast")`` on every site) and the naive path
(``naive_site`` on the first ``--naive-sites`` of the bench's naive sample) dispatch on ``bench_patch.py``'s model
and sites (CPU, float32, one thread) with its inputs' shapes, strides, dtypes and contiguity, and the matmul
FLOPs those calls do (``mm``/``addmm``/``bmm``). With ``--against TREE`` the same trace is taken in a second process
whose ``PYTHONPATH`` is another checkout (``git worktree add /tmp/old COMMIT``) and the two are compared as multisets:
equal means both checkouts do the same kernels on the same layouts, so a timing difference between them is the box,
not the code. Timings on a shared 2-core box move by +-20% from process to process; this does not.

    python benchmarks/op_trace.py --against /tmp/old-3202950            # the bench's 160 sites (a minute or two)
    python benchmarks/op_trace.py --shape tiny --docs 1 --json trace.json

Prints (and ``--json`` writes) per path and checkout: aten calls, distinct call signatures, matmul GFLOP, calls per
operator; then the calls one checkout makes that the other does not (first 20), and whether the order alone differs.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _describe(a) -> str:
    import torch

    if isinstance(a, torch.Tensor):
        return f"{tuple(a.shape)}{tuple(a.stride())}{str(a.dtype).removeprefix('torch.')}{'' if a.is_contiguous() else ' nc'}"
    if isinstance(a, (int, float, bool, str, type(None))):
        return repr(a)
    return type(a).__name__


def _matmul_flops(name: str, args) -> int:
    """FLOPs of one matmul call (2 m k n per product); 0 for other operators."""
    import torch

    shapes = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]
    if name in ("aten.mm.default", "aten.bmm.default") and len(shapes) >= 2:
        a, b = shapes[0], shapes[1]
        batch = a[0] if name == "aten.bmm.default" else 1
        return 2 * batch * a[-2] * a[-1] * b[-1]
    if name == "aten.addmm.default" and len(shapes) >= 3:
        a, b = shapes[1], shapes[2]
        return 2 * a[0] * a[1] * b[1]
    return 0


def record(fn, *args, **kwargs) -> dict:
    """Run ``fn(*args, **kwargs)`` and record the aten calls it dispatches (on this thread): ``{"calls": [signature,
    ...] in order, "matmul_flops": int}``, a signature being the operator and its inputs' shapes, strides, dtypes."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    calls: list[str] = []
    flops = [0]

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            flat, _ = tree_flatten((args, kwargs or {}))
            name = str(func)
            calls.append(f"{name}\t{' '.join(_describe(a) for a in flat)}")
            flops[0] += _matmul_flops(name, flat)
            return func(*args, **(kwargs or {}))

    with Record():
        fn(*args, **kwargs)
    return {"calls": calls, "matmul_flops": flops[0]}


def trace(shape_name: str = "cpu", docs: int | None = None, sites_per_doc: int | None = None, naive_sites: int = 2) -> dict:
    """Both paths' aten calls (``record``) on ``bench_patch``'s model and sites (float32, CPU, one thread), with
    whatever ``causal_kl`` this process imports: ``{"fast": every site, "naive": the first ``naive_sites`` of the
    bench's naive sample, "causal_kl": its path}``."""
    import random

    import torch

    sys.path.insert(0, str(HERE))
    import bench_patch
    import causal_kl
    from causal_kl.patching import naive_site, patch_documents

    torch.set_num_threads(1)
    shape = dict(bench_patch.SHAPES[shape_name])
    if docs is not None:
        shape["docs"] = docs
    if sites_per_doc is not None:
        shape["sites_per_doc"] = sites_per_doc
    m = bench_patch.build_model(shape, torch.float32, "cpu")
    documents = bench_patch.make_docs(shape)
    site_sets = bench_patch._sites(documents, shape, torch.float32, "cpu", 1)
    docs_sv = [(ids, sv) for (ids, _), sv in zip(documents, site_sets)]
    sample = [(ids, s) for ids, sv in docs_sv for s in sv]
    random.Random(0).shuffle(sample)  # bench_patch's naive sample
    sample = sample[:naive_sites]
    L = shape["layer"]
    patch_documents(m, docs_sv[:1], L, "fast")  # once outside the trace: lazy one-time set-up stays out
    naive_site(m, sample[0][0], L, sample[0][1])
    return {"fast": record(patch_documents, m, docs_sv, L, "fast"),
            "naive": record(lambda: [naive_site(m, ids, L, s) for ids, s in sample]),
            "causal_kl": str(Path(causal_kl.__file__).parent)}


def summary(t: dict) -> dict:
    """Calls, distinct signatures, matmul GFLOP and calls per operator of one path's trace."""
    ops = collections.Counter(c.split("\t", 1)[0] for c in t["calls"])
    return {"aten_calls": len(t["calls"]), "distinct_signatures": len(set(t["calls"])),
            "matmul_gflop": round(t["matmul_flops"] / 1e9, 3), "calls_per_operator": dict(ops.most_common())}


def compare(a: dict, b: dict, limit: int = 20) -> dict:
    """How trace ``b`` differs from trace ``a``: the signatures each has more often than the other (with the excess
    count), and whether the two are the same multiset (the same calls, perhaps in another order)."""
    ca, cb = collections.Counter(a["calls"]), collections.Counter(b["calls"])
    only_a, only_b = ca - cb, cb - ca
    return {"same_calls": not only_a and not only_b, "same_order": a["calls"] == b["calls"],
            "matmul_gflop_difference": round((b["matmul_flops"] - a["matmul_flops"]) / 1e9, 3),
            "extra_in_first": [f"{n}x {s}" for s, n in only_a.most_common(limit)],
            "extra_in_second": [f"{n}x {s}" for s, n in only_b.most_common(limit)]}


def _trace_in(tree: str, args) -> dict:
    """``trace`` in a fresh process that imports ``causal_kl`` from ``tree``."""
    env = dict(os.environ, PYTHONPATH=str(Path(tree).resolve()))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--shape", args.shape, "--naive-sites", str(args.naive_sites), "--dump", "-"]
    if args.docs is not None:
        cmd += ["--docs", str(args.docs)]
    if args.sites_per_doc is not None:
        cmd += ["--sites-per-doc", str(args.sites_per_doc)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="cpu", help="a bench_patch.py shape (cpu: its 160 sites)")
    ap.add_argument("--docs", type=int, default=None)
    ap.add_argument("--sites-per-doc", dest="sites_per_doc", type=int, default=None)
    ap.add_argument("--naive-sites", dest="naive_sites", type=int, default=2, help="naive-path sites traced (the bench's sample)")
    ap.add_argument("--against", help="another checkout's root: trace its causal_kl in a second process and compare")
    ap.add_argument("--json", help="write the summaries and the comparison here")
    ap.add_argument("--dump", help=argparse.SUPPRESS)  # '-': the raw trace as JSON on stdout (what --against runs)
    args = ap.parse_args(argv)
    if args.dump:
        json.dump(trace(args.shape, args.docs, args.sites_per_doc, args.naive_sites), sys.stdout)
        return 0
    here = trace(args.shape, args.docs, args.sites_per_doc, args.naive_sites)
    other = _trace_in(args.against, args) if args.against else None
    out: dict = {"this": here["causal_kl"], "against": other["causal_kl"] if other else None}
    for path in ("fast", "naive"):
        out[path] = {"this": summary(here[path])}
        if other:
            out[path]["against"] = summary(other[path])
            out[path]["comparison (against -> this)"] = compare(other[path], here[path])
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
