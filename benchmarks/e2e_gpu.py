#!/usr/bin/env python
"""End-to-end benchmark: the production run, as users run it, on one GPU box.

Writes a random-weight model of a chosen shape with ``save_pretrained`` (the gemma-3-27b shape: 62 blocks,
d 5376, 54 GB in bf16) to fast local storage, a local corpus parquet of 200 documents and a tokenizer, then
runs ``snakemake`` on ``config/gemma3-27b.yaml`` with only the model and corpus paths and the routes
overridden: first with one ``file`` route, then with a second one added. It prints, for each run, the wall
time of each stage (from Snakemake's own log), the model loads (from the jobs' logs), and the share of the
wall time the patch engine computed, and the model timeline from the servers' own ``model_server.jsonl``
(``causal_kl.timeline``: time to the first model request, loads, busy seconds and share, the gaps between requests
and the tail after the last one); and it writes everything as JSON.

    python benchmarks/e2e_gpu.py --shape 27b --device cuda --dtype bfloat16 --workdir /dev/shm/ckl-e2e
    python benchmarks/e2e_gpu.py --shape tiny --device cpu --dtype float32 --workdir /tmp/ckl-e2e   # seconds; the tests

The box needs torch and transformers; snakemake and what it needs can come as wheels (``--wheels``: a folder
installed with ``pip --target`` before anything runs).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORDS = ("the model reads a state and writes its next token through layer window attention cache prefix patch "
         "noise gold site document offset loss of to in is for with on that by this we it as at from data "
         "value result method system process number 0 1 2 3 42 1000 2048 time year people work part place "
         "case point group problem fact hand week company program question government").split()


def make_corpus(path: Path, n_docs: int, words: tuple[int, int], seed: int = 0) -> list[str]:
    """``n_docs`` documents of random words (plus sentence breaks) as a parquet with a ``content`` column."""
    import pandas as pd

    rng = random.Random(seed)
    texts = []
    for _ in range(n_docs):
        n = rng.randint(*words)
        w = [rng.choice(WORDS) for _ in range(n)]
        for i in range(0, n, rng.randint(8, 20)):
            w[i] = w[i].capitalize()
            if i:
                w[i - 1] += "."
        texts.append(" ".join(w))
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"content": texts}).to_parquet(path)
    return texts


def write_model(shape_name: str, dtype: str, device: str, out: Path, texts: list[str]) -> dict:
    """A random-weight model of the shape, saved with ``save_pretrained`` beside a tokenizer trained on the corpus."""
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_patch import SHAPES, build_model  # noqa: E402

    from causal_kl.demo.tokenizer import train_tokenizer

    shape = dict(SHAPES[shape_name])
    t0 = time.time()
    loaded = build_model(shape, getattr(torch, dtype), device)
    built = time.time() - t0
    loaded.model.config.architectures = ["Gemma3ForCausalLM"]
    loaded.model.save_pretrained(out, max_shard_size="5GB")
    saved = time.time() - t0 - built
    train_tokenizer(texts[:50], min(1024, shape["vocab_size"])).save_pretrained(out)
    del loaded
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    return {"build_s": round(built, 1), "save_s": round(saved, 1), "checkpoint_gb": round(size / 1e9, 2),
            "layer": shape["layer"], "d_model": shape["hidden_size"]}


def write_route(path: Path, config: dict, d: int, scale: float, seed: int) -> None:
    """A ``file`` route's vectors: one per site of the run (sampled here exactly as the sites rule will), random."""
    import numpy as np
    import pandas as pd

    from causal_kl.sites import build_sites, load_tokenizer

    sample = build_sites(config["corpus"], config["sites"], config["seed"], load_tokenizer(config["model"]["path"]))
    sites = sample.sites.to_pandas()
    rng = np.random.default_rng(seed)
    vec = (rng.standard_normal((len(sites), d)) * scale).astype(np.float32)
    pd.DataFrame({"doc_id": sites.doc_id, "position": sites.position, "reconstruction": list(vec)}).to_parquet(path)


def stage_times(log_text: str) -> dict:
    """Per rule: jobs, first start to last finish (s), from a Snakemake log; and the whole span."""
    events = re.findall(r"\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]\n(?:local)?(rule|checkpoint) (\w+):|"
                        r"\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]\nFinished jobid: \d+ \(Rule: (\w+)\)", log_text)
    parse = lambda s: datetime.strptime(" ".join(s.split()), "%a %b %d %H:%M:%S %Y").timestamp()  # noqa: E731
    spans: dict[str, dict] = {}
    for start_ts, _, start_rule, end_ts, end_rule in events:
        if start_rule:
            r = spans.setdefault(start_rule, {"jobs": 0, "start": parse(start_ts), "end": parse(start_ts)})
            r["jobs"] += 1
            r["start"] = min(r["start"], parse(start_ts))
        elif end_rule in spans:
            spans[end_rule]["end"] = max(spans[end_rule]["end"], parse(end_ts))
    return {k: {"jobs": v["jobs"], "seconds": round(v["end"] - v["start"], 1)} for k, v in spans.items()}


def run_snakemake(workdir: Path, configfile: Path, cores: int, label: str) -> dict:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir), "--cores", str(cores),
           "--scheduler", "greedy",
           "--configfile", str(configfile)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    before = set((workdir / ".snakemake/log").glob("*.log")) if (workdir / ".snakemake/log").exists() else set()
    t0 = time.time()
    res = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    (workdir / f"snakemake_{label}.out").write_text(res.stdout + res.stderr)
    if res.returncode != 0:
        raise SystemExit(f"snakemake ({label}) failed (exit {res.returncode}); see {workdir}/snakemake_{label}.out:\n"
                         + (res.stdout + res.stderr)[-3000:])
    logs = sorted(set((workdir / ".snakemake/log").glob("*.log")) - before)
    text = logs[-1].read_text() if logs else ""
    return {"wall_s": round(wall, 1), "stages": stage_times(text), "log": str(logs[-1]) if logs else None,
            "window": (t0, t0 + wall)}


def model_timeline(workdir: Path, run: str, window: tuple[float, float]) -> dict:
    """The invocation's model timeline (``causal_kl.timeline``) from the servers' own ``model_server.jsonl``."""
    from causal_kl.timeline import read_events, server_timeline

    events = [e for f in sorted((workdir / "logs" / run).rglob("model_server.jsonl")) for e in read_events(f)]
    return server_timeline(events, *window)


def job_log_facts(workdir: Path, run: str, since: float) -> dict:
    """Model loads and patch compute seconds written to the jobs' logs since ``since`` (the model server's excluded)."""
    loads, patch_s = 0, 0.0
    for log in (workdir / "logs" / run).rglob("*.log"):
        if log.stat().st_mtime < since or log.name == "model_server.log":
            continue
        text = log.read_text(errors="replace")
        loads += len(re.findall(r"loaded model .* \[load #\d+ in pid \d+\]", text))
        patch_s += sum(float(x) for x in re.findall(r"(?:floors|route \S+)(?: \(span \d+\))?: \d+ sites in ([\d.]+) s", text))
    return {"model_loads": loads, "patch_compute_s": round(patch_s, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="27b", help="a shape of benchmarks/bench_patch.py (27b, cpu, tiny)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--workdir", required=True, type=Path, help="fast local storage (the 27b checkpoint is 54 GB)")
    ap.add_argument("--docs", type=int, default=200, help="documents (production: 200 rows, 1000 sites)")
    ap.add_argument("--words", type=int, nargs=2, default=(700, 2400), help="document length range, in words")
    ap.add_argument("--max-sites", type=int, default=1000)
    ap.add_argument("--cores", type=int, default=os.cpu_count())
    ap.add_argument("--bootstrap", type=int, default=None, help="override analysis.bootstrap (the tests use few)")
    ap.add_argument("--json", type=Path, help="write the figures here too")
    ap.add_argument("--keep-s", type=float, default=0.0,
                    help="model_server: {keep_s: N} for both invocations: the second adopts the first's server (issue "
                         "#32 item 4); the benchmark stops the kept server at its end")
    ap.add_argument("--no-work-ahead", action="store_true",
                    help="model_server: {work_ahead: false}: each shard job computed only when its request comes (the "
                         "A of an A/B of issue #32 item 3 on one checkout)")
    args = ap.parse_args(argv)
    import yaml

    wd = args.workdir.resolve()
    wd.mkdir(parents=True, exist_ok=True)
    out: dict = {"shape": args.shape, "device": args.device, "dtype": args.dtype}
    if args.device.startswith("cuda"):
        import torch

        out["device_name"] = torch.cuda.get_device_name()
    t0 = time.time()
    texts = make_corpus(wd / "corpus.parquet", args.docs, tuple(args.words))
    model_dir = wd / "model"
    if not (model_dir / "config.json").exists():
        out["checkpoint"] = write_model(args.shape, args.dtype, args.device, model_dir, texts)
    out["setup_s"] = round(time.time() - t0, 1)
    print(f"setup: {out['setup_s']} s {out.get('checkpoint', '')}", flush=True)

    config = yaml.safe_load((ROOT / "config" / "gemma3-27b.yaml").read_text())
    config.update(run="e2e", device=args.device, dtype=args.dtype)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_patch import SHAPES  # noqa: E402

    config["model"].update(path=str(model_dir), layer=SHAPES[args.shape]["layer"])  # 27b: 41, as in production
    config["corpus"].update(name="e2e/synthetic", path=str(wd / "corpus.parquet"), rows=[0, args.docs])
    config["sites"]["max_sites"] = args.max_sites
    if args.bootstrap is not None:
        config.setdefault("analysis", {})["bootstrap"] = args.bootstrap
    server = {**({"keep_s": args.keep_s} if args.keep_s else {}), **({"work_ahead": False} if args.no_work_ahead else {})}
    if server:
        config["model_server"] = server
    out["keep_s"], out["work_ahead"] = args.keep_s, not args.no_work_ahead
    from causal_kl.config import validate_config
    from causal_kl.timeline import format_timeline

    d = json.loads((model_dir / "config.json").read_text())["hidden_size"]
    routes = {}
    for i, name in enumerate(("first", "second")):
        path = wd / f"{name}.parquet"
        write_route(path, validate_config(json.loads(json.dumps(config))), d, 1.0, seed=i)
        routes[name] = {"kind": "file", "path": str(path)}
    runs = {}
    for label, names in (("one_route", ["first"]), ("second_route", ["first", "second"])):
        config["routes"] = {n: routes[n] for n in names}
        cfg_path = wd / f"e2e_{label}.yaml"
        cfg_path.write_text(yaml.safe_dump(config))
        since = time.time()
        r = run_snakemake(wd, cfg_path, args.cores, label)
        r.update(job_log_facts(wd, "e2e", since))
        r["timeline"] = model_timeline(wd, "e2e", r.pop("window"))
        r["patch_share"] = round(r["patch_compute_s"] / r["wall_s"], 3) if r["wall_s"] else None
        runs[label] = r
        print(f"{label}: {r['wall_s']} s end to end, {r['model_loads']} model load(s), patch compute "
              f"{r['patch_compute_s']} s ({100 * (r['patch_share'] or 0):.0f}% of the wall)", flush=True)
        print(f"    model timeline: {format_timeline(r['timeline'])}", flush=True)
        for stage, v in sorted(r["stages"].items(), key=lambda kv: -kv[1]["seconds"]):
            print(f"    {stage:22s} {v['jobs']:3d} job(s) {v['seconds']:7.1f} s", flush=True)
        if args.json:
            args.json.write_text(json.dumps(dict(out, runs=runs), indent=2))
    out["runs"] = runs
    if args.keep_s:
        from causal_kl.client import stop_servers

        print(f"stopped the kept model server(s): {stop_servers(workdir=str(wd))}", flush=True)
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
