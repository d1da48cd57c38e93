#!/usr/bin/env python
"""Benchmark the analysis stage at scale: every aggregate, table, statistic, figure and the report at N sites.

For each N of ``--sites`` it synthesizes a run's upstream files with the project's contracts
(``tests/synthetic_results.make_results``: sites, golds of width ``--d`` per shard, span golds, resample
choices, eval mean, each span's floors and routes as patch shards of ``--shard-size`` sites, geometry),
then runs each analysis job function (the ``causal_kl.jobs`` function its rule runs, with the rule's
inputs and params) in its own fresh Python process, one after another, and records the job's wall
seconds, CPU seconds and peak RSS (``os.wait4``: the child's own ``ru_maxrss``, imports included).
Aggregates run first, on the shards; every later job reads what the jobs before it wrote, as in the
workflow. It prints one row per job with its numbers at each N and the growth exponent between
consecutive sizes (``log(t2 / t1) / log(n2 / n1)``: 1 is linear; n log n from 10k to 100k is ~1.1).

    python benchmarks/bench_analysis.py --sites 1000 10000 100000    # the README's table
    python benchmarks/bench_analysis.py --sites 2000 10000 --jobs gold_aggregate patch_floors_aggregate

The first took 70 min on a shared 2-core box and needs 20 GB of disk at 100k sites (freed after).
``--jobs`` runs only the named jobs (rules); a job reads what the jobs before it wrote, so name those
it needs too. ``--json`` writes every number; ``--keep`` keeps each size's files and ``--reuse``
measures them again without synthesizing them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from causal_kl.paths import FIG_NAMES, ROUTE_TABLES, STATS  # noqa: E402  (the registry's names of a route's files)

LAYER = 3
"""The synthetic run's layer (``tests/synthetic_results.LAYER``)."""
SPAN_OFFSETS = [0, 1, 5, 31]
LIMIT_MB = 4096
"""The target: every job at most 4 GB at the largest size."""


def job_list(R: Path, routes: list[str], spans: list[int], n_boot: int) -> list[dict]:
    """Every analysis job of one layer ``R`` (= ``results/{run}/L3``), as the rules call them: ``{"name", "key",
    "module", "function", "kwargs"}`` in an order where each job's inputs exist (aggregates first). ``key`` tells
    jobs of the same rule apart (route, span); ``name`` is the rule."""
    s = str
    L = str(LAYER)
    prov = {"config_hash": "bench", "run": R.parent.name, "model": "synthetic", "layer": LAYER}
    boot = {"n_boot": n_boot, "seed": 42, "ci": 0.95}
    extra = [k for k in spans if k > 1]
    jobs: list[dict] = []

    def add(name: str, module: str, key: str = "", **kwargs) -> None:
        if kwargs.get("provenance") is True:  # the record run_rule builds for the job
            kwargs["provenance"] = {**prov, "rule": name, **({"span": int(kwargs["span"])} if "span" in kwargs else {})}
        jobs.append({"name": name, "key": key, "module": f"causal_kl.jobs.{module}", "function": name, "kwargs": kwargs})

    def shards(folder: Path) -> list[str]:
        return sorted(s(p) for p in folder.glob("shard_*.parquet"))

    add("gold_aggregate", "gold", shards=shards(R / "gold"), gold=s(R / "gold.parquet"), layer=L, provenance=True)
    for k in extra:
        add("span_gold_aggregate", "spans", f"span{k}", shards=shards(R / f"span{k}/gold"),
            gold=s(R / f"span{k}/gold.parquet"), layer=L, span=str(k), provenance=True)
    for k in spans:
        add("patch_floors_aggregate", "patch", f"span{k}", shards=shards(R / f"span{k}/patch/floors"),
            patch=s(R / f"span{k}/patch/floors.parquet"), layer=L, span=str(k), provenance=True)
        for r in routes:
            add("patch_route_aggregate", "patch", f"span{k}/{r}", shards=shards(R / f"span{k}/patch/{r}"),
                patch=s(R / f"span{k}/patch/{r}.parquet"), layer=L, route=r, span=str(k), provenance=True)
    add("patch_aggregate", "patch", floors=[s(R / f"span{k}/patch/floors.parquet") for k in spans],
        routes=[s(R / f"span{k}/patch/{r}.parquet") for k in spans for r in routes], index=s(R / "patch.json"), layer=L,
        provenance=True)

    gold = s(R / "gold.parquet")
    add("error_norms", "tables", gold=gold, choices=s(R / "conditions/choices.parquet"),
        mean=s(R / "conditions/mean.parquet"), norms=s(R / "analysis/error_norms.parquet"), layer=L, provenance=True)
    floors1 = s(R / "span1/patch/floors.parquet")
    for r in routes:
        ps, geo_json = s(R / f"analysis/{r}/per_site.parquet"), s(R / f"geometry/{r}.json")
        t = {name: s(R / f"tables/{r}/{name}.csv") for name in ROUTE_TABLES}
        st = {name: s(R / f"stats/{r}/{name}.json") for name in STATS}
        add("per_site", "tables", r, floors=floors1, patch=s(R / f"span1/patch/{r}.parquet"),
            geometry=s(R / f"geometry/{r}.parquet"), error_norms=s(R / "analysis/error_norms.parquet"),
            sites=s(R.parent / "sites.parquet"), table=ps, layer=L, route=r, provenance=True)
        add("table_conditions", "tables", r, per_site=ps, reference=[], table=t["conditions"], layer=L, route=r, **boot)
        add("table_quartiles", "tables", r, per_site=ps, geometry_json=geo_json, gold=gold, reference=[],
            table=t["quartiles"], layer=L, route=r, **boot)
        add("table_offsets", "tables", r, floors=floors1, patch=s(R / f"span1/patch/{r}.parquet"), reference=[],
            table=t["offsets"], layer=L, route=r)
        add("table_token_classes", "tables", r, per_site=ps, geometry_json=geo_json, reference=[],
            table=t["token_classes"], classes={"space": r"^\s"}, layer=L, route=r)
        for k in extra:
            kw = dict(floors=s(R / f"span{k}/patch/floors.parquet"), patch=s(R / f"span{k}/patch/{r}.parquet"),
                      layer=L, route=r, span=str(k))
            add("table_span_conditions", "tables", f"span{k}/{r}", table=s(R / f"span{k}/tables/{r}/conditions.csv"),
                **kw, **boot)
            add("table_span_offsets", "tables", f"span{k}/{r}", table=s(R / f"span{k}/tables/{r}/offsets.csv"), **kw)
        if extra:
            add("table_spans", "tables", r, floors=[s(R / f"span{k}/patch/floors.parquet") for k in spans],
                patches=[s(R / f"span{k}/patch/{r}.parquet") for k in spans],
                summaries=[s(R / f"span{k}/sites.json") for k in extra], table=s(R / f"tables/{r}/spans.csv"),
                spans=list(spans), offsets=SPAN_OFFSETS, layer=L, route=r, **boot)
        add("stat_correlation", "statistics", r, per_site=ps, record=st["correlation"], layer=L, route=r)
        add("stat_paired", "statistics", r, per_site=ps, record=st["paired"], layer=L, route=r, **boot)
        add("stat_energy", "statistics", r, per_site=ps, record=st["energy"], layer=L, route=r, **boot)
        add("stat_floor_offsets", "statistics", r, offsets=t["offsets"], record=st["floor_offsets"], tolerance=2.0,
            min_kl=1e-4, layer=L, route=r)
        add("stats_route", "statistics", r, **st, conditions=t["conditions"], geometry_json=geo_json,
            record=s(R / f"stats/{r}.json"), layer=L, route=r)
    figure = lambda path: {"png": s(f"{path}.png"), "svg": s(f"{path}.svg"), "dpi": 100}  # noqa: E731
    for r in routes:
        ps = s(R / f"analysis/{r}/per_site.parquet")
        add("fig1_route", "figures", r, per_site=ps, correlation=s(R / f"stats/{r}/correlation.json"),
            **figure(R / f"figures/{r}/{FIG_NAMES['fig1']}"), style={"subsample": 400, "seed": 42}, layer=L, route=r)
        add("fig2_route", "figures", r, energy=s(R / f"stats/{r}/energy.json"),
            **figure(R / f"figures/{r}/{FIG_NAMES['fig2']}"), style={}, layer=L, route=r)
        add("fig3_route", "figures", r, offsets=s(R / f"tables/{r}/offsets.csv"),
            **figure(R / f"figures/{r}/{FIG_NAMES['fig3']}"), style={}, layer=L, route=r)
        for k in extra:
            add("fig3_span", "figures", f"span{k}/{r}", offsets=s(R / f"span{k}/tables/{r}/offsets.csv"),
                **figure(R / f"span{k}/figures/{r}/fig3_kl_by_offset"), style={}, layer=L, route=r, span=str(k))
        if extra:
            add("fig_spans", "figures", r, spans=s(R / f"tables/{r}/spans.csv"), **figure(R / f"figures/{r}/spans"),
                style={}, layer=L, route=r)
    add("fig1_all", "figures", per_site=[s(R / f"analysis/{r}/per_site.parquet") for r in routes],
        correlation=[s(R / f"stats/{r}/correlation.json") for r in routes], **figure(R / f"figures/{FIG_NAMES['fig1']}"),
        style={"subsample": 400, "seed": 42}, routes=routes, layer=L)
    add("fig2_all", "figures", energy=[s(R / f"stats/{r}/energy.json") for r in routes],
        **figure(R / f"figures/{FIG_NAMES['fig2']}"), style={}, routes=routes, layer=L)
    add("fig3_all", "figures", offsets=[s(R / f"tables/{r}/offsets.csv") for r in routes],
        **figure(R / f"figures/{FIG_NAMES['fig3']}"), style={}, routes=routes, layer=L)
    add("table_routes", "tables", conditions=[s(R / f"tables/{r}/conditions.csv") for r in routes],
        geometry=[s(R / f"geometry/{r}.json") for r in routes], whole_context=[], sae=[],
        table=s(R / "tables/routes.csv"), routes=routes, layer=L)
    add("fig_routes", "figures", routes_table=s(R / "tables/routes.csv"), **figure(R / "figures/routes_comparison"),
        style={}, layer=L)
    # a sweep's comparison, over this layer's tables and the same ones standing for a second layer
    pairs = [[layer, r] for layer in (LAYER, LAYER + 1) for r in routes]
    add("table_layers", "tables", conditions=[s(R / f"tables/{r}/conditions.csv") for _, r in pairs],
        geometry=[s(R / f"geometry/{r}.json") for _, r in pairs], table=s(R.parent / "tables/layers.csv"), pairs=pairs)
    add("fig_layers", "figures", layers=s(R.parent / "tables/layers.csv"), **figure(R.parent / "figures/layers"),
        style={})
    add("table_frontier", "tables", routes_table=s(R / "tables/routes.csv"),
        conditions=[s(R / f"tables/{r}/conditions.csv") for r in routes], table=s(R / "tables/frontier.csv"),
        kinds={r: "file" for r in routes}, layer=L)
    add("fig_frontier", "figures", frontier=s(R / "tables/frontier.csv"), **figure(R / "figures/frontier"), style={},
        layer=L)
    add("table_frontier_layers", "tables", frontiers=[s(R / "tables/frontier.csv")],
        table=s(R.parent / "tables/frontier.csv"), layers=[LAYER])
    add("fig_frontier_layers", "figures", frontier=s(R.parent / "tables/frontier.csv"),
        **figure(R.parent / "figures/frontier"), style={})
    add("gate", "report", geometry=[s(R / f"geometry/{r}.json") for r in routes], floors=floors1,
        reextract=[s(R / "reextract.json")], record=s(R / "gate.json"), min_cos=0.999, gold_repatch_kl_max=0.01,
        expected_fve={r: {} for r in routes}, routes=routes, layer=L)
    main_page = R.parent / "report.html"
    for r in routes:
        add("report_route", "report", r, files=[], page=s(route_page(R, r)), manifest=route_manifest(R, r, spans),
            main=s(main_page), run_name=R.parent.name, route_config={"kind": "file"}, reference=False, layer=L, route=r)
    add("report_html", "report", run=s(R.parent / "run.json"), files=[], pages=[s(route_page(R, r)) for r in routes],
        report=s(main_page), manifest=report_manifest(R, routes, spans), reference=False)
    return jobs


def _fig(path: Path) -> dict:
    return {"png": str(path) + ".png", "svg": str(path) + ".svg"}


def route_page(R: Path, route: str) -> Path:
    """A route's page of the report, as ``rules/common.smk: route_page`` names it."""
    return R.parent / "report" / R.name / f"{route}.html"


def route_manifest(R: Path, r: str, spans: list[int]) -> dict:
    """A route's page's manifest for the synthetic layer, as ``rules/common.smk: route_manifest`` builds it."""
    s = str
    extra = [k for k in spans if k > 1]
    f = {name: s(R / f"tables/{r}/{name}.csv") for name in ROUTE_TABLES}
    f["stats"] = s(R / f"stats/{r}.json")
    f.update({key: _fig(R / f"figures/{r}/{name}") for key, name in FIG_NAMES.items()})
    if extra:
        f["spans"] = {"table": s(R / f"tables/{r}/spans.csv"), "figure": _fig(R / f"figures/{r}/spans"),
                      "per_span": {str(k): {"conditions": s(R / f"span{k}/tables/{r}/conditions.csv"),
                                            "offsets": s(R / f"span{k}/tables/{r}/offsets.csv"),
                                            "fig3": _fig(R / f"span{k}/figures/{r}/fig3_kl_by_offset"),
                                            "recon": s(R / f"span{k}/recon/{r}.parquet"),
                                            "sites": s(R / f"span{k}/sites.json")} for k in extra}}
    return f


def report_manifest(R: Path, routes: list[str], spans: list[int]) -> dict:
    """The main page's manifest for the synthetic layer, as ``rules/common.smk: report_manifest`` builds it."""
    s = str
    comparison = {"routes": s(R / "tables/routes.csv"), "fig_routes": _fig(R / "figures/routes_comparison"),
                  **{key: _fig(R / f"figures/{name}") for key, name in FIG_NAMES.items()}}
    frontier = {"table": s(R / "tables/frontier.csv"), "figure": _fig(R / "figures/frontier")}
    return {"layers": {str(LAYER): {"gate": s(R / "gate.json"), "routes": {r: s(route_page(R, r)) for r in routes},
                                    "comparison": comparison, "frontier": frontier}},
            "across": {"table": s(R.parent / "tables/layers.csv"), "figure": _fig(R.parent / "figures/layers"),
                       "frontier": {"table": s(R.parent / "tables/frontier.csv"),
                                    "figure": _fig(R.parent / "figures/frontier")}},
            "spans": list(spans)}


def run_job(job: dict, workdir: Path, timeout: float) -> dict:
    """Run one job in a fresh Python process: its wall and CPU seconds and peak RSS (MB), from ``os.wait4``.

    (This process imports nothing but the standard library and never holds data, so what a child's peak RSS counts
    from before its ``exec`` is a few MB: the numbers are the job's own.)"""
    spec = workdir / f".job_{os.getpid()}.json"
    spec.write_text(json.dumps(job))
    return _measured([sys.executable, str(Path(__file__).resolve()), "--run-job", str(spec)], job, timeout, spec)


def _measured(cmd: list[str], job: dict, timeout: float, spec: Path | None = None) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               MPLBACKEND="Agg")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = t0 + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.01)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    out = proc.stdout.read().decode(errors="replace")
    proc.stdout.close()
    if spec is not None:
        spec.unlink()
    return {"name": job["name"], "key": job["key"], "seconds": wall, "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "rss_mb": usage.ru_maxrss / 1024, "rc": proc.returncode, "log": out[-2000:] if proc.returncode else ""}


def _child(spec_path: str) -> int:
    """The job process: import the job's function and call it with the rule's arguments."""
    import importlib

    job = json.loads(Path(spec_path).read_text())
    func = getattr(importlib.import_module(job["module"]), job["function"])
    func(**job["kwargs"])
    return 0


PER_DOC = 10
"""Sites per synthetic document (the last document has one)."""


def layer_dir(root: Path) -> Path:
    """Where ``synthesize`` writes the layer's files under ``root``."""
    return root / "results" / "bench" / f"L{LAYER}"


def synthesize(root: Path, n_sites: int, routes: list[str], spans: list[int], d: int, shard_size: int) -> Path:
    """A run's upstream files at ``n_sites`` sites (``PER_DOC`` per document, the last document one): shards only, so
    that the aggregates run on them."""
    sys.path.insert(0, str(ROOT / "tests"))
    from synthetic_results import make_results

    return make_results(root, run="bench", routes=tuple(routes), n_sites=n_sites, per_doc=PER_DOC, d=d, seed=0,
                        spans=tuple(spans), shard_size=shard_size)


def growth(a: float, b: float, n_a: int, n_b: int) -> float:
    """The exponent e of ``b / a = (n_b / n_a) ** e``."""
    if a <= 0 or b <= 0 or n_a == n_b:
        return float("nan")
    return math.log(b / a) / math.log(n_b / n_a)


def machine() -> str:
    cpu = "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}, Python {platform.python_version()}"


def table(results: dict, sizes: list[int]) -> str:
    """One row per job (rule and key): seconds and peak RSS at each size, and the growth exponents."""
    head = ["job"] + [f"{k}@{_short(n)}" for n in sizes for k in ("s", "MB")]
    head += [f"{k} {_short(a)}→{_short(b)}" for a, b in zip(sizes, sizes[1:]) for k in ("e_s", "e_MB")]
    rows = [head]
    names = []
    for n in sizes:
        for r in results[str(n)]["jobs"]:
            label = f"{r['name']} {r['key']}".strip()
            if label not in names:
                names.append(label)
    for label in names:
        by_n = {n: next((r for r in results[str(n)]["jobs"] if f"{r['name']} {r['key']}".strip() == label), None)
                for n in sizes}
        row = [label]
        for n in sizes:
            r = by_n[n]
            row += ["–", "–"] if r is None else ([f"{r['seconds']:.2f}", f"{r['rss_mb']:.0f}"] if r["rc"] == 0
                                                 else ["FAIL", f"{r['rss_mb']:.0f}"])
        for a, b in zip(sizes, sizes[1:]):
            ra, rb = by_n[a], by_n[b]
            if ra is None or rb is None:
                row += ["–", "–"]
            else:
                row += [f"{growth(ra['seconds'], rb['seconds'], a, b):.2f}",
                        f"{growth(ra['rss_mb'], rb['rss_mb'], a, b):.2f}"]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


def _short(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sites", type=int, nargs="+", default=[1000, 10000, 100000], help="sizes N to run")
    ap.add_argument("--routes", type=int, default=2, help="routes of the layer (per-route jobs run for each)")
    ap.add_argument("--spans", type=int, nargs="+", default=[1, 4], help="span lengths patched (1 must be one)")
    ap.add_argument("--d", type=int, default=5376, help="gold width (gemma-3-27b: 5376)")
    ap.add_argument("--shard-size", type=int, default=100)
    ap.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of every CI")
    ap.add_argument("--jobs", nargs="+", default=None, help="run only these jobs (rule names)")
    ap.add_argument("--workdir", default=None, help="where the synthetic runs go (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep each size's files (default: deleted after the size)")
    ap.add_argument("--reuse", action="store_true", help="use a size's files kept in --workdir instead of making them")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds before a job is killed")
    ap.add_argument("--json", default=None, help="write every number here")
    ap.add_argument("--run-job", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--synthesize", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.run_job:
        return _child(args.run_job)
    if args.synthesize:
        root, *rest = json.loads(args.synthesize)["synthesize"]
        synthesize(Path(root), *rest)
        return 0
    if 1 not in args.spans:
        ap.error("--spans must include 1 (every route table reads the single-site splice)")
    routes = [f"r{i}" for i in range(args.routes)]
    spans = sorted(set(args.spans))
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_analysis_"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "sizes": args.sites, "routes": routes,
                     "spans": spans, "d": args.d, "shard_size": args.shard_size, "n_boot": args.n_boot}
    print(f"bench_analysis: {results['machine']}; {len(routes)} routes, spans {spans}, d {args.d}, "
          f"shards of {args.shard_size}, {args.n_boot} bootstrap resamples", flush=True)
    failed = False
    for n in args.sites:
        root = work / f"n{n}"
        synth = {"synthesize": [str(root), n, routes, spans, args.d, args.shard_size]}
        if args.reuse and (layer_dir(root) / "reextract.json").exists():
            made = {"seconds": 0.0, "rc": 0}
        else:
            made = _measured([sys.executable, str(Path(__file__).resolve()), "--synthesize", json.dumps(synth)],
                             {"name": "synthesize", "key": ""}, args.timeout)
        if made["rc"]:
            print(made["log"])
            return 1
        R = layer_dir(root)
        n_sites = json.loads((R / "reextract.json").read_text())["n"]
        disk = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        entry = {"n_sites": n_sites, "synth_seconds": made["seconds"], "disk_bytes": disk, "jobs": []}
        print(f"\n{n_sites} sites: synthesized in {made['seconds']:.1f} s ({disk / 2**30:.2f} GiB)", flush=True)
        for job in job_list(R, routes, spans, args.n_boot):
            if args.jobs and job["name"] not in args.jobs:
                continue
            r = run_job(job, work, args.timeout)
            entry["jobs"].append(r)
            flag = "" if r["rc"] == 0 else f"  FAILED (exit {r['rc']}):\n{r['log']}"
            print(f"  {r['name']:<24} {r['key']:<14} {r['seconds']:8.2f} s  cpu {r['cpu_seconds']:8.2f} s  "
                  f"{r['rss_mb']:7.0f} MB{flag}", flush=True)
            failed |= r["rc"] != 0
        results[str(n)] = entry
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    if not args.workdir and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print("\nseconds (s) and peak RSS (MB) per job; e_*: growth exponent between sizes (1 = linear)\n")
    print(table(results, args.sites))
    largest = results[str(args.sites[-1])]["jobs"]
    over = [f"{r['name']} {r['key']}".strip() for r in largest if r["rss_mb"] > LIMIT_MB]
    print(f"\njobs over {LIMIT_MB} MB at {args.sites[-1]} sites: {', '.join(over) or 'none'}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
