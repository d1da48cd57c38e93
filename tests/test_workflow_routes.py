"""Workflow level: adding a route to a finished run builds only that route's jobs.

Runs Snakemake on a copy of the workflow with a tiny Gemma-3 and a fixture corpus: sites, golds,
one `file` route, its geometry and the patch table; then adds a second `file` route and checks
that the dry run (`snakemake -n`) lists only jobs of the new route (plus the aggregate that
collects every route's patch shards).
"""

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import yaml

WORKFLOW = ("Snakefile", "rules", "config/schema", "workflow_scripts", "envs", "reports")
AGGREGATES = {"patch_aggregate"}


def _copy_workflow(root, dest):
    for rel in WORKFLOW:
        src = root / rel
        if src.is_dir():
            shutil.copytree(src, dest / rel)
        elif src.exists():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dest / rel)


def _snakemake(workdir, *args):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "snakemake", "--cores", "1", *args]  # Snakefile reads config/config.yaml
    res = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout + res.stderr


def _dry_run_jobs(out):
    """(rule, route wildcard or None) of each job a dry run lists."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out):
        m = re.match(r"(?:local)?rule (\w+):", block.strip())
        if m:
            w = re.search(r"wildcards:.*\broute=([^,\s]+)", block)
            jobs.append((m.group(1), w.group(1) if w else None))
    return jobs


def _add_file_route(tmp, name, sites, gold, noise):
    ids = sites.site_id.to_numpy()
    recon = gold + noise * np.random.default_rng(len(name)).standard_normal(gold.shape)
    np.save(tmp / f"{name}.npy", recon.astype(np.float32))
    np.save(tmp / f"{name}.site_ids.npy", ids.astype(np.int64))
    cfg = yaml.safe_load((tmp / "config/config.yaml").read_text())
    cfg["routes"][name] = {"kind": "file", "path": str(tmp / f"{name}.npy")}
    (tmp / "config/config.yaml").write_text(yaml.safe_dump(cfg))


def test_adding_a_file_route_builds_only_its_jobs(root, gemma3_dir, corpus_path, tmp_path):
    _copy_workflow(root, tmp_path)
    config = {
        "run": "t", "seed": 42, "device": "cpu", "dtype": "float32",
        "corpus": {"name": "c", "path": str(corpus_path), "split": "train", "column": "content", "rows": [0, 4]},
        "model": {"path": str(gemma3_dir), "layer": 2},
        "sites": {"positions_per_doc": 3, "min_position": 50, "max_length": 256, "max_sites": 6, "shard_size": 3},
        "routes": {},
    }
    (tmp_path / "config/config.yaml").write_text(yaml.safe_dump(config))
    _snakemake(tmp_path, "results/t/sites.parquet", "results/t/gold.parquet")
    sites = pd.read_parquet(tmp_path / "results/t/sites.parquet")
    gold_t = pd.read_parquet(tmp_path / "results/t/gold.parquet").set_index("site_id").loc[sites.site_id]
    gold = np.stack(gold_t.activation.to_numpy()).astype(np.float64)

    _add_file_route(tmp_path, "first", sites, gold, 0.5)
    targets = ["results/t/patch.parquet", "results/t/geometry/first.json"]
    _snakemake(tmp_path, *targets)
    assert "Nothing to be done" in _snakemake(tmp_path, "-n", *targets)

    _add_file_route(tmp_path, "second", sites, gold, 2.0)
    jobs = _dry_run_jobs(_snakemake(tmp_path, "-n", *targets, "results/t/geometry/second.json"))
    rules = {rule for rule, _ in jobs}
    assert {"recon_file", "geometry", "patch_route"} <= rules, jobs
    assert all(route == "second" or rule in AGGREGATES for rule, route in jobs), jobs
    n_shards = sites.shard.nunique()
    assert sum(rule == "patch_route" for rule, _ in jobs) == n_shards


def test_each_route_kind_gets_its_rules(root, tmp_path):
    """Dry run with one route of every kind: each kind's rule chain, one shared training-gold job."""
    _copy_workflow(root, tmp_path)
    for f in ("r.npy", "r.site_ids.npy", "ex.parquet"):
        (tmp_path / f).write_bytes(b"")
    routes = {
        "f": {"kind": "file", "path": str(tmp_path / "r.npy")},
        "p": {"kind": "pca", "train_rows": [4, 8], "k": 2},
        "t": {"kind": "text_channel", "train_rows": [4, 8]},
        "ar": {"kind": "nla_ar", "checkpoint": "ar-ckpt", "explanations": str(tmp_path / "ex.parquet")},
        "av": {"kind": "nla_av", "checkpoint": "av-ckpt", "ar_checkpoint": "ar-ckpt"},
    }
    config = {"run": "t", "device": "cpu", "corpus": {"name": "c", "path": "corpus.parquet", "column": "content", "rows": [0, 4]},
              "model": {"path": "model", "layer": 2}, "routes": routes}
    (tmp_path / "config/config.yaml").write_text(yaml.safe_dump(config))
    jobs = _dry_run_jobs(_snakemake(tmp_path, "-n", *[f"results/t/geometry/{r}.json" for r in routes]))
    by_route = {}
    for rule, route in jobs:
        by_route.setdefault(route, set()).add(rule)
    assert by_route["f"] == {"recon_file", "geometry"}
    assert by_route["p"] == {"recon_pca", "geometry"}
    assert by_route["t"] == {"recon_text_channel", "geometry"}
    assert by_route["ar"] == {"recon_nla_ar", "geometry"}
    assert by_route["av"] == {"explain_nla_av", "recon_nla_ar", "geometry"}
    assert sum(rule == "train_gold" for rule, _ in jobs) == 1
