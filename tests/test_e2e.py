"""The end-to-end GPU benchmark runs at a tiny shape on the CPU, so it cannot rot before the next GPU box."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_e2e_benchmark_at_a_tiny_shape(root, tmp_path):
    out = tmp_path / "e2e.json"
    res = subprocess.run([sys.executable, str(root / "benchmarks/e2e_gpu.py"), "--shape", "tiny", "--device", "cpu",
                          "--dtype", "float32", "--workdir", str(tmp_path / "wd"), "--docs", "8", "--words", "120", "180",
                          "--max-sites", "24", "--cores", "2", "--bootstrap", "20", "--json", str(out)],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    r = json.loads(out.read_text())
    one, two = r["runs"]["one_route"], r["runs"]["second_route"]
    # the whole production DAG ran with one model load, then the added route ran only its own model jobs
    assert one["model_loads"] == 1 and two["model_loads"] == 1, r
    assert {"sites", "gold", "patch_floors", "patch_route", "report_html"} <= set(one["stages"])
    assert "gold" not in two["stages"] and "patch_floors" not in two["stages"] and "patch_route" in two["stages"]
    assert one["stages"]["gold"]["jobs"] == one["stages"]["patch_floors"]["jobs"] == 1  # 24 sites: one shard
    assert 0 < one["patch_compute_s"] <= one["wall_s"] and r["checkpoint"]["layer"] == 3
    # the model timeline, from the server's own records, agrees with the jobs' logs and Snakemake's plan
    for run in (one, two):
        t = run["timeline"]
        assert t["loads"] == run["model_loads"] and 0 < t["busy_s"] <= t["wall_s"] and t["tail_s"] >= 0
        assert t["requests"] >= sum(run["stages"][k]["jobs"] for k in ("patch_route",))
        assert t["gaps"] <= t["requests"] and 0 <= t["gap_total_s"] < t["wall_s"]
        # the model was there before the run: Snakemake's onstart loaded it while `sites` ran, off every job's path
        assert t["preloads"] == 1 and t["loads"] == 1 and not t["load_on_request_path"], t
