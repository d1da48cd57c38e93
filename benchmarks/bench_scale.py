#!/usr/bin/env python
"""Cluster scale, measured: how a large study plans and packs into allocations, and what a model job costs beyond
its own compute.

``plan``: builds a study's inputs on a tiny model (a 6-block Gemma-3, a corpus of random words, one random TopK SAE
per layer and route in SAELens' format), makes the ``sites`` checkpoint's outputs by hand (as if it had run: the
dry run then plans every shard), and dry-runs the real workflow twice, locally and under ``--profile
profiles/slurm``. For each it prints the jobs, the model jobs, the group jobs (one allocation each) and the model
jobs left alone, the planning seconds and the peak RSS of the Snakemake process (its ``VmHWM``)::

    python benchmarks/bench_scale.py plan --sites 100000 --shard-size 1000 --layers 0 1 2 3 --spans 1 4 16 --routes 4
    python benchmarks/bench_scale.py plan --sites 2000 --layers 1 3 --routes 3        # the issue's 2,000-site case

``overhead``: runs the workflow for real on this machine (``snakemake --cores N``) with enough shards to make at least
``--jobs`` model jobs (gold and floors per shard, one layer), then reads the model server's own event records
(``logs/<run>/model_server.jsonl``: one line per request, with its start and seconds) and prints the model phase's
wall time, the seconds the server computed, and the difference per model job: what starting each job costs
(Snakemake's scheduling, a Python process, imports, connecting)::

    python benchmarks/bench_scale.py overhead --jobs 500 --cores 2

Both write their numbers as JSON (``--json``). Timed on the machine they run on; the README's table names it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the tests' tiny-checkpoint builders (fixtures.py)
ROUTE_KINDS = ("pca", "text_channel", "sae", "sae")
"""The routes of a study, in order: ``--routes 4`` takes all four (two SAEs of a suite), 3 the demo's three."""


# ----------------------------------------------------------------------------- inputs
def copy_workflow(dest: Path) -> Path:
    """The workflow as the tests copy it, plus the profiles and the snakefmt settings."""
    from workflow_helpers import copy_workflow as copy_rules

    copy_rules(dest, ROOT)
    shutil.copytree(ROOT / "profiles", dest / "profiles", dirs_exist_ok=True)
    return dest


def write_sae(path: Path, layer: int, d_in: int, d_sae: int, k: int, seed: int) -> None:
    import numpy as np

    from causal_kl.sae import write_saelens_dir

    rng = np.random.default_rng(seed)
    w_dec = rng.standard_normal((d_sae, d_in)).astype(np.float32)
    w_dec /= np.linalg.norm(w_dec, axis=1, keepdims=True)
    tensors = {"W_enc": w_dec.T.copy(), "b_enc": np.zeros(d_sae, np.float32), "W_dec": w_dec,
               "b_dec": np.zeros(d_in, np.float32)}
    cfg = {"architecture": "topk", "d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": True, "normalize_activations": "none", "k": k,
           "metadata": {"hook_name": f"blocks.{layer}.hook_resid_post", "model_name": "tiny"}}
    write_saelens_dir(path, tensors, cfg)


def study_config(work: Path, sites: int, shard_size: int, layers: list[int], spans: list[int], n_routes: int,
                 whole_context: bool = True, kinds: list[str] | None = None) -> dict:
    n_docs = max(4, -(-sites // 10))
    routes: dict = {}
    kinds = list(kinds) if kinds else list(ROUTE_KINDS[:n_routes])
    for i, kind in enumerate(kinds):
        name = f"{kind}_{i}" if kinds.count(kind) > 1 else kind
        entry: dict = {"kind": kind}
        if kind in ("pca", "text_channel"):
            entry.update(train_rows=[n_docs, n_docs + 8], **({"k": 8} if kind == "pca" else {"top_k": 4}))
        elif kind == "file":  # reconstructions computed elsewhere (the production config's route): one per site id
            entry["path"] = str(work / f"file_{i}.parquet")
        else:
            entry["path"] = str(work / f"sae_{i}" / "L{layer}")
        routes[name] = entry
    return {
        "run": "scale", "seed": 42, "device": "cpu", "dtype": "float32",
        "corpus": {"name": "bench/random-words", "path": str(work / "corpus.parquet"), "split": "train",
                   "column": "content", "rows": [0, n_docs]},
        "model": {"path": str(work / "model"), "layer": layers},
        "sites": {"positions_per_doc": 10, "min_position": 50, "max_length": 256, "max_sites": sites,
                  "shard_size": shard_size},
        "patch": {"spans": spans},
        "whole_context": {"enabled": whole_context, "n_contexts": 2, "n_ctx": 64},
        "routes": routes,
    }


def build_inputs(work: Path, config: dict, n_docs_extra: int = 8) -> None:
    import fixtures

    fixtures.tiny_gemma3_text(work / "model")
    fixtures.write_corpus(work / "corpus.parquet", n_docs=config["corpus"]["rows"][1] + n_docs_extra)
    for name, entry in config["routes"].items():
        if entry["kind"] == "file":
            import numpy as np
            import pyarrow as pa
            import pyarrow.parquet as pq

            n = config["sites"]["max_sites"]
            vectors = np.random.default_rng(0).standard_normal((n, 64)).astype(np.float32)
            pq.write_table(pa.table({"site_id": pa.array(np.arange(n), pa.int64()),
                                     "reconstruction": pa.FixedSizeListArray.from_arrays(vectors.ravel(), 64)}),
                           entry["path"])
        if entry["kind"] == "sae":
            for layer in config["model"]["layer"]:
                write_sae(Path(entry["path"].format(layer=layer)), layer, 64, 128, 8, seed=layer)


def fake_sites(wf: Path, config: dict) -> int:
    """The ``sites`` checkpoint's outputs, made by hand and newer than its inputs: a dry run plans every shard."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    r = wf / "results" / config["run"]
    n, size = config["sites"]["max_sites"], config["sites"]["shard_size"]
    per_doc, length = config["sites"]["positions_per_doc"], config["sites"]["max_length"]
    n_shards = -(-n // size)
    (r / "sites").mkdir(parents=True, exist_ok=True)
    # what planning reads of them (the span check reads doc_id/position and doc_id/n_tokens); contract columns
    ids = np.arange(n)
    docs = [f"bench:train:{i // per_doc}" for i in ids]
    pq.write_table(pa.table({"site_id": ids, "doc_id": docs, "position": 50 + (ids % per_doc) * 10,
                             "token_id": np.zeros(n, np.int64), "token": ["a"] * n, "next_token_id": np.zeros(n, np.int64),
                             "shard": ids // size}), r / "sites.parquet")
    n_docs = -(-n // per_doc)
    pq.write_table(pa.table({"doc_id": [f"bench:train:{i}" for i in range(n_docs)], "row": np.arange(n_docs),
                             "n_tokens": np.full(n_docs, length),
                             "input_ids": pa.array([[] for _ in range(n_docs)], pa.list_(pa.int32()))}), r / "docs.parquet")
    for i in range(n_shards):
        (r / "sites" / f"shard_{i:03d}.parquet").write_bytes(b"")
    (r / "sites.json").write_text(json.dumps({"n_shards": n_shards, "n_sites": config["sites"]["max_sites"]}))
    return n_shards


# ----------------------------------------------------------------------------- measuring a process
def _hwm_mb(pid: int) -> float:
    """The process's own peak RSS so far (``VmHWM``, MB); 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_measured(cmd: list[str], cwd: Path, env: dict | None = None, log: Path | None = None,
                 timeout_s: float = 3600) -> dict:
    """Run ``cmd``; its wall seconds, peak RSS (MB), return code and output.

    The peak is the process's own high-water mark (``VmHWM``), polled while it runs: ``wait4``'s ``ru_maxrss``
    would also count the high-water mark of this (large) benchmark process, which a child carries from its fork
    through its exec."""
    out = open(log, "w") if log else subprocess.PIPE
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout_s
    peak = 0.0
    while True:
        peak = max(peak, _hwm_mb(proc.pid))
        pid, status, _ = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
        time.sleep(0.05)
    seconds = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = Path(log).read_text() if log else proc.stdout.read()
    return {"seconds": seconds, "peak_rss_mb": peak, "rc": proc.returncode, "output": text}


def snakemake_env(work: Path) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    env.setdefault("CAUSAL_KL_RUNTIME_DIR", str(work / "runtime"))
    return env


# ----------------------------------------------------------------------------- reading a dry run
def job_counts(output: str) -> dict[str, int]:
    """``{rule: count}`` from a dry run's "Job stats" table."""
    table = output.split("Job stats:", 1)[-1]
    counts = {}
    for line in table.splitlines()[3:]:
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not m:
            if counts and line.strip().startswith("total"):
                break
            continue
        counts[m.group(1)] = int(m.group(2))
    return counts


def group_jobs(output: str) -> dict[str, int]:
    """``{group id: jobs}`` of the group jobs a dry run lists (under a cluster profile)."""
    groups: dict[str, int] = {}
    current = None
    for line in output.splitlines():
        m = re.search(r"Group job (\S+) \(jobs in lexicogr\. order\):", line)
        if m:
            current = m.group(1)
            groups[current] = 0
        elif current and re.match(r"^\s+(?:local)?(?:rule|checkpoint) \w+:", line):
            groups[current] += 1
        elif line.strip() and not line[:1].isspace() and not line.startswith("Shell command"):
            current = None
    return groups


def plan(args: argparse.Namespace) -> dict:
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ckl-plan-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    config = study_config(work, args.sites, args.shard_size, args.layers, args.spans, args.routes,
                          kinds=args.route_kinds)
    import yaml

    if not (work / "model").exists():
        build_inputs(work, config)
    results = {"sites": args.sites, "shard_size": args.shard_size, "layers": args.layers, "spans": args.spans,
               "routes": list(config["routes"]), "machine": machine()}
    for mode in args.modes:
        wf = work / f"wf-{mode}"
        shutil.rmtree(wf, ignore_errors=True)
        copy_workflow(wf)
        (wf / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        results["shards"] = fake_sites(wf, config)
        cmd = [sys.executable, "-m", "snakemake", "-n", "--cores", "2"]
        if mode == "slurm":
            cmd += ["--profile", "profiles/slurm"]
        r = run_measured(cmd, wf, env=snakemake_env(work), log=work / f"plan-{mode}.log")
        if r["rc"] != 0:
            raise SystemExit(f"dry run ({mode}) failed, see {work / f'plan-{mode}.log'}:\n{r['output'][-3000:]}")
        counts = job_counts(r["output"])
        groups = group_jobs(r["output"]) if mode == "slurm" else {}
        from causal_kl.model_rules import MODEL_RULES  # the rules whose jobs load a model

        model_jobs = sum(v for k, v in counts.items() if k in MODEL_RULES)
        grouped = sum(groups.values())
        results[mode] = {"jobs": sum(counts.values()), "model_jobs": model_jobs, "group_jobs": len(groups),
                         "model_jobs_alone": model_jobs - grouped if mode == "slurm" else model_jobs,
                         "allocations_for_model_jobs": (len(groups) + model_jobs - grouped) if mode == "slurm" else None,
                         "seconds": round(r["seconds"], 1), "peak_rss_mb": round(r["peak_rss_mb"]), "counts": counts}
        print(f"{mode:>6}: {results[mode]['jobs']:,} jobs ({model_jobs:,} model jobs), "
              + (f"{len(groups):,} group jobs holding {grouped:,} of them, {model_jobs - grouped:,} alone -> "
                 f"{results[mode]['allocations_for_model_jobs']:,} allocations with model jobs; " if mode == "slurm" else "")
              + f"planned in {r['seconds']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    return results


# ----------------------------------------------------------------------------- per-job overhead of a local run
def overhead(args: argparse.Namespace) -> dict:
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ckl-overhead-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    n_shards = -(-args.jobs // 2)  # gold + floors per shard
    config = study_config(work, n_shards * args.shard_size, args.shard_size, [2], [1], 0, whole_context=False)
    config["sites"]["positions_per_doc"] = 5
    config["corpus"]["rows"] = [0, -(-n_shards * args.shard_size // 5) + 4]
    import yaml

    if not (work / "model").exists():
        build_inputs(work, config)
    wf = work / "wf"
    shutil.rmtree(wf, ignore_errors=True)
    copy_workflow(wf)
    (wf / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    env = snakemake_env(work)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    targets = [f"results/scale/L2/span1/patch/floors.parquet"]
    extra = ["--scheduler", args.scheduler] if args.scheduler else []
    r = run_measured([sys.executable, "-m", "snakemake", "--cores", str(args.cores), *extra, *targets], wf, env=env,
                     log=work / "overhead.log", timeout_s=6 * 3600)
    if r["rc"] != 0:
        raise SystemExit(f"the run failed, see {work / 'overhead.log'}:\n{r['output'][-3000:]}")
    events = [json.loads(l) for l in (wf / "logs/scale/model_server.jsonl").read_text().splitlines() if l.strip()]
    reqs = sorted((e for e in events if e["event"] == "request"), key=lambda e: e["start"])
    # the model's work: the requests and the jobs a server computed ahead (causal_kl.ahead; their requests then only
    # take the result), merged per server
    work = sorted((e for e in events if e["event"] in ("request", "ahead")), key=lambda e: e["start"])
    loads = [e for e in events if e["event"] == "load"]
    first, last = work[0]["start"], max(e["start"] + e["seconds"] for e in work)
    from causal_kl.timeline import merged

    busy, gaps = 0.0, []
    for pid in {e["pid"] for e in work}:
        spans = merged((e["start"], e["start"] + e["seconds"]) for e in work if e["pid"] == pid)
        busy += sum(b - a for a, b in spans)
        gaps += [b[0] - a[1] for a, b in zip(spans, spans[1:])]
    # servers side by side: one per slot (a server restarted on the same slot, e.g. after a code change, is the
    # same slot's time, not another one running in parallel)
    n_slots = len({e["slot"] for e in reqs})
    n_servers = len({e["pid"] for e in reqs})
    gaps.sort()
    phase = last - first
    res = {"machine": machine(), "cores": args.cores, "scheduler": args.scheduler or "default", "shards": n_shards, "shard_size": args.shard_size,
           "model_jobs": len(reqs), "loads": len(loads), "slots": n_slots, "servers": n_servers, "run_seconds": round(r["seconds"], 1),
           "model_phase_seconds": round(phase, 1), "server_busy_seconds": round(busy, 1),
           "overhead_per_job_s": round((phase * n_slots - busy) / len(reqs), 3),
           "gap_median_s": round(gaps[len(gaps) // 2], 3) if gaps else None,
           "gap_p90_s": round(gaps[int(len(gaps) * 0.9)], 3) if gaps else None,
           "compute_per_job_s": round(busy / len(reqs), 3),
           "computed_ahead": sum(1 for e in work if e["event"] == "ahead")}
    print(f"{len(reqs)} model jobs ({n_shards} shards of {args.shard_size} sites, --cores {args.cores}) on "
          f"{n_slots} slot(s), {n_servers} server(s), {len(loads)} load(s): model phase {phase:.1f} s, the server computed {busy:.1f} s "
          f"({busy / len(reqs):.3f} s per job, {res['computed_ahead']} computed ahead); overhead {res['overhead_per_job_s']:.3f} s per model job "
          f"(gap between requests: median {res['gap_median_s']} s, p90 {res['gap_p90_s']} s)", flush=True)
    return res


def machine() -> str:
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        cpu = "unknown CPU"
    return f"{cpu}, {os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("plan", help="dry-run a large study locally and under profiles/slurm")
    p.add_argument("--sites", type=int, default=100_000)
    p.add_argument("--shard-size", type=int, default=100)
    p.add_argument("--layers", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--spans", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--routes", type=int, default=4, choices=range(0, len(ROUTE_KINDS) + 1))
    p.add_argument("--route-kinds", nargs="+", choices=["pca", "text_channel", "sae", "file"],
                   help="the routes by kind instead of --routes (e.g. 'file': the production config's one route)")
    p.add_argument("--modes", nargs="+", default=["local", "slurm"], choices=["local", "slurm"])
    o = sub.add_parser("overhead", help="a real local run of many model jobs: seconds per job beyond its compute")
    o.add_argument("--jobs", type=int, default=500)
    o.add_argument("--shard-size", type=int, default=10)
    o.add_argument("--cores", type=int, default=2)
    o.add_argument("--scheduler", choices=["ilp", "greedy"], help="Snakemake's job scheduler (default: Snakemake's)")
    for s in (p, o):
        s.add_argument("--workdir", help="where inputs and runs go (default: a new temp dir; reused when given)")
        s.add_argument("--json", help="write the numbers here")
    args = ap.parse_args(argv)
    res = plan(args) if args.what == "plan" else overhead(args)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
