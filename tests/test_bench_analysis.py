"""The analysis benchmark runs (tiny sizes, a few jobs) and prints what it says it does; every analysis rule is in it.

Not a timed test: the numbers are the benchmark's business (README, "Analysis at scale").
"""
import importlib
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import fixtures
import pytest

JOBS = ["patch_floors_aggregate", "patch_route_aggregate", "table_offsets"]
"""A chain that runs alone: the aggregates of span 1, then a table that reads them."""


@pytest.fixture(scope="module")
def bench(root):
    return fixtures.load_benchmark("bench_analysis")


def test_tiny_analysis_benchmark_runs_and_its_output_parses(root, tmp_path):
    out = tmp_path / "b.json"
    cmd = [sys.executable, str(root / "benchmarks/bench_analysis.py"), "--sites", "30", "90", "--d", "8", "--routes", "1",
           "--spans", "1", "--n-boot", "10", "--jobs", *JOBS, "--workdir", str(tmp_path / "w"), "--json", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["sizes"] == [30, 90] and r["d"] == 8 and r["routes"] == ["r0"]
    for n in (30, 90):
        entry = r[str(n)]
        assert entry["n_sites"] == n and entry["synth_seconds"] > 0
        assert [j["name"] for j in entry["jobs"]] == JOBS
        for j in entry["jobs"]:
            assert j["rc"] == 0 and j["seconds"] > 0 and j["cpu_seconds"] > 0 and 10 < j["rss_mb"] < 4096
    # the table: a header, then per job its seconds and MB at each size and the growth exponents between them
    lines = res.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("job "))
    assert lines[head].split()[1:] == ["s@30", "MB@30", "s@90", "MB@90", "e_s", "30→90", "e_MB", "30→90"]
    for job, line in zip(JOBS, lines[head + 1:head + 1 + len(JOBS)]):
        cells = line.split()
        assert cells[0] == job and all(re.fullmatch(r"-?\d+(\.\d+)?", x) for x in cells[-6:]), line
    assert "jobs over 4096 MB at 90 sites: none" in res.stdout
    assert not (tmp_path / "w" / "n30").exists()  # each size's files are deleted once measured


def test_every_analysis_rule_is_in_the_benchmark_with_its_arguments(bench, root):
    """Each rule of the analysis stages and every aggregate has a job in the benchmark, and the benchmark calls its job
    function with exactly the arguments the function takes (a rule that gains an input cannot leave it behind)."""
    rules = set()
    for stage in ("tables", "statistics", "figures", "report"):
        rules |= set(re.findall(r"^rule (\w+):", (root / f"rules/{stage}.smk").read_text(), re.M))
    for stage in ("gold", "spans", "patch"):
        rules |= {r for r in re.findall(r"^rule (\w+):", (root / f"rules/{stage}.smk").read_text(), re.M)
                  if r.endswith("aggregate")}
    jobs = bench.job_list(Path("/nowhere/results/bench/L3"), ["r0", "r1"], [1, 4], 10)
    assert {j["name"] for j in jobs} == rules
    for job in jobs:
        func = getattr(importlib.import_module(job["module"]), job["function"])
        inspect.signature(func).bind(**job["kwargs"])  # TypeError when an argument is missing or unknown
