"""Workflow level: shards are the unit of rerun.

Runs the real Snakefile on a tiny Gemma-3 and a fixture corpus (3 shards of 3 sites; stored
golds written in NLA base.parquet format and re-extract checked), then shows with dry runs that
a deleted gold shard re-extracts only that shard, and a deleted patch shard reruns only that
shard (plus the aggregate that collects them).
"""

import json
import os
import re
import shutil
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import yaml

from causal_kl.timeline import read_events
from workflow_helpers import TORCH_ENV_BLOCKS, copy_workflow, dry_run_jobs, dry_run_shards, run_snakemake, tiny_config, write_config


def gone(pid: int, wait_s: float = 10.0) -> bool:
    """The process has exited (no /proc entry, or a zombie waiting to be reaped) within ``wait_s``."""
    deadline = time.time() + wait_s
    while time.time() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except (OSError, IndexError):
            return True
        time.sleep(0.1)
    return False


def test_shards_rerun_alone(root, gemma3_dir, corpus_path, tmp_path):
    copy_workflow(tmp_path, root)
    # 3 documents x 3 positions yield 9 sites: asking for 12 plans the 3 shards that exist, not 4, and says so
    sites = {"positions_per_doc": 3, "min_position": 50, "max_length": 256, "max_sites": 12, "shard_size": 3}
    corpus = dict(tiny_config(corpus_path, gemma3_dir)["corpus"], rows=[0, 3])
    write_config(tmp_path, tiny_config(corpus_path, gemma3_dir, sites=sites, corpus=corpus, gold={"write_demo_base": True}))
    out = run_snakemake(tmp_path, "results/t/L2/patch.json", "results/t/run.json", blocked=TORCH_ENV_BLOCKS)
    assert "Group job" not in out  # locally the model rules' cluster groups are inactive: each job runs as before
    R = tmp_path / "results/t"
    RL = R / "L2"
    # the model server: one load for every model job of the run (one device), and gone once snakemake is
    loads = [m for log in (tmp_path / "logs/t").rglob("*.log") if log.name != "model_server.log"
             for m in re.findall(r"loaded model .* \[load #\d+ in pid (\d+)\]", log.read_text())]
    model_jobs = len(list((tmp_path / "logs/t/L2/gold").glob("*.log"))) + len(list((tmp_path / "logs/t/L2").rglob("patch/**/shard_*.log")))
    assert len(loads) == 1 and model_jobs == 6, (loads, model_jobs)
    assert gone(int(loads[0])), "the model server outlived snakemake"
    # the server computed the next planned shard jobs while Snakemake started them (causal_kl.ahead), and each was
    # claimed by exactly its own job's request: the plan's requests are the jobs' own
    events = read_events(tmp_path / "logs/t/model_server.jsonl")
    ahead = [e for e in events if e["event"] == "ahead"]
    claims = [e for e in events if e["event"] == "request" and e.get("ahead")]
    assert ahead and all(e["ok"] for e in ahead) and sorted(e["ahead"] for e in claims) == [e["ahead"] for e in ahead]
    assert {e["func"] for e in ahead} == {"causal_kl.jobs.gold:gold", "causal_kl.jobs.patch:patch_floors"}, ahead
    assert not list(R.rglob(".ahead-*")) and not list(Path(os.environ["CAUSAL_KL_RUNTIME_DIR"]).glob("*/plans/*"))
    patch = pd.read_parquet(RL / "span1/patch/floors.parquet")
    index = json.loads((RL / "patch.json").read_text())  # the layer's patch dataset: here the floors of span 1 alone
    assert [(f["path"], f["span"], f["route"], f["rows"]) for f in index["files"]] == [
        ("span1/patch/floors.parquet", 1, "", len(patch))]
    sites = pd.read_parquet(R / "sites.parquet")
    assert sorted(patch.site_id.unique()) == sorted(sites.site_id)
    assert set(patch.condition) >= {"clean", "gold", "resample_cross_doc", "zero", "mean"}
    assert (patch.route == "").all() and patch.offset.between(0, 31).all() and (patch.span == 1).all()
    # the demo-style stored golds passed the re-extract check (bf16 round trip keeps cos > 0.999)
    stats = json.loads((R / "sites.json").read_text())
    assert stats["n_sites"] == 9 and stats["n_shards"] == 3 and "max_sites is 12" in stats["warning"]
    assert sorted(p.name for p in (RL / "span1/patch/floors").iterdir()) == [f"shard_{i:03d}.parquet" for i in range(3)]
    rx = json.loads((RL / "reextract.json").read_text())
    assert rx["passed"] and rx["n"] == 9 and rx["min_cos"] > 0.999
    run = json.loads((R / "run.json").read_text())
    assert run["layer"] == 2 and run["config_hash"] and run["code_version"]

    # a deleted gold shard: only that shard is re-extracted (what reads the golds reruns after it)
    (RL / "gold/shard_001.parquet").unlink()
    targets = ["results/t/L2/patch.json", *(f"results/t/L2/gold/shard_{i:03d}.parquet" for i in range(3))]
    out = run_snakemake(tmp_path, "-n", *targets)
    assert [r for r, _ in dry_run_jobs(out)].count("gold") == 1 and dry_run_shards(out, "gold") == ["001"]
    run_snakemake(tmp_path, *targets)
    # everything downstream reran; seeded, recorded choices make the rerun bit-identical
    pd.testing.assert_frame_equal(pd.read_parquet(RL / "span1/patch/floors.parquet"), patch)

    # a deleted (or failed) patch shard reruns alone, then the aggregate
    (RL / "span1/patch/floors/shard_002.parquet").unlink()
    out = run_snakemake(tmp_path, "-n", "results/t/L2/patch.json", "results/t/L2/span1/patch/floors/shard_002.parquet")
    jobs = dry_run_jobs(out)
    assert sorted(r for r, _ in jobs) == ["patch_aggregate", "patch_floors", "patch_floors_aggregate"], jobs
    assert dry_run_shards(out, "patch_floors") == ["002"]

    # the same shards computed only when their jobs ask (model_server: {work_ahead: false}), in a copy: equal data
    copy = tmp_path.parent / f"{tmp_path.name}-no-ahead"
    shutil.copytree(tmp_path, copy, symlinks=True)
    shutil.rmtree(copy / "results/t/L2")
    (copy / "logs/t/model_server.jsonl").unlink()
    config = yaml.safe_load((copy / "config/config.yaml").read_text())
    write_config(copy, dict(config, model_server={"work_ahead": False}))
    run_snakemake(copy, "results/t/L2/patch.json", "results/t/run.json")
    assert not [e for e in read_events(copy / "logs/t/model_server.jsonl") if e["event"] == "ahead" or e.get("ahead")]
    made = sorted(p.relative_to(tmp_path) for p in RL.rglob("*.parquet"))  # (floors shard 2 was deleted above)
    assert set(made) <= {p.relative_to(copy) for p in (copy / "results/t/L2").rglob("*.parquet")} and len(made) > 6
    for rel in made:
        assert pq.read_table(tmp_path / rel).equals(pq.read_table(copy / rel)), rel  # rows; provenance times differ
