"""Workflow level: adding a route to a finished run builds only that route's jobs.

Runs Snakemake on a copy of the workflow with a tiny Gemma-3 and a fixture corpus: sites, golds,
one `file` route, its geometry and the layer's patch dataset; then adds a second `file` route and checks
that the dry run (`snakemake -n`) lists only jobs of the new route (plus the aggregate that
collects every route's patch shards).
"""

import json
import os
import re

import numpy as np
import pandas as pd
import yaml

from workflow_helpers import TORCH_ENV_BLOCKS, copy_workflow, dry_run_jobs, run_snakemake, tiny_config, write_config

AGGREGATES = {"patch_aggregate"}
"""The one job of the layer (not of a route) that a new route reruns: the layer's patch dataset (patch.json), which
lists every route's files."""


def _add_file_route(tmp, name, sites, gold, noise):
    ids = sites.site_id.to_numpy()
    recon = gold + noise * np.random.default_rng(len(name)).standard_normal(gold.shape)
    np.save(tmp / f"{name}.npy", recon.astype(np.float32))
    np.save(tmp / f"{name}.site_ids.npy", ids.astype(np.int64))
    cfg = yaml.safe_load((tmp / "config/config.yaml").read_text())
    cfg["routes"][name] = {"kind": "file", "path": str(tmp / f"{name}.npy")}
    (tmp / "config/config.yaml").write_text(yaml.safe_dump(cfg))


def test_adding_a_file_route_builds_only_its_jobs(root, gemma3_dir, corpus_path, tmp_path):
    copy_workflow(tmp_path, root)
    write_config(tmp_path, tiny_config(corpus_path, gemma3_dir))
    run_snakemake(tmp_path, "results/t/sites.parquet", "results/t/L2/gold.parquet", blocked=TORCH_ENV_BLOCKS)
    sites = pd.read_parquet(tmp_path / "results/t/sites.parquet")
    gold_t = pd.read_parquet(tmp_path / "results/t/L2/gold.parquet").set_index("site_id").loc[sites.site_id]
    gold = np.stack(gold_t.activation.to_numpy()).astype(np.float64)

    _add_file_route(tmp_path, "first", sites, gold, 0.5)
    targets = ["results/t/L2/patch.json", "results/t/L2/geometry/first.json"]
    run_snakemake(tmp_path, *targets, blocked=TORCH_ENV_BLOCKS)
    assert "Nothing to be done" in run_snakemake(tmp_path, "-n", *targets)
    # one clean pass per document for the floors and the route together: the model server computed each
    # document's pass for the floors shard and served it from its cache to the route's shard after it
    passes = {"computed": 0, "cached": 0}
    for log in (tmp_path / "logs/t/L2/span1/patch").rglob("*.log"):
        for computed, cached in re.findall(r"clean passes: (\d+) computed, (\d+) from the cache", log.read_text()):
            passes["computed"] += int(computed)
            passes["cached"] += int(cached)
    assert passes == {"computed": sites.doc_id.nunique(), "cached": sites.doc_id.nunique()}, passes

    # the file behind a route replaced by other vectors, with an older date: what read it reruns (by content)
    stamp = (tmp_path / "first.npy").stat().st_mtime_ns
    np.save(tmp_path / "first.npy", (gold + 0.7).astype(np.float32))
    os.utime(tmp_path / "first.npy", ns=(stamp - 10**10, stamp - 10**10))
    jobs = dry_run_jobs(run_snakemake(tmp_path, "-n", *targets))
    assert ("recon_file", "first") in jobs and ("geometry", "first") in jobs, jobs
    run_snakemake(tmp_path, *targets, blocked=TORCH_ENV_BLOCKS)

    _add_file_route(tmp_path, "second", sites, gold, 2.0)
    jobs = dry_run_jobs(run_snakemake(tmp_path, "-n", *targets, "results/t/L2/geometry/second.json"))
    rules = {rule for rule, _ in jobs}
    assert {"recon_file", "geometry", "patch_route"} <= rules, jobs
    assert all(route == "second" or rule in AGGREGATES for rule, route in jobs), jobs
    n_shards = sites.shard.nunique()
    assert sum(rule == "patch_route" for rule, _ in jobs) == n_shards
    # on a cluster the same jobs run, the new route's patches packed in one allocation with nothing else
    import shutil

    shutil.copytree(root / "profiles", tmp_path / "profiles", dirs_exist_ok=True)
    out = run_snakemake(tmp_path, "-n", "--profile", "profiles/slurm", *targets, "results/t/L2/geometry/second.json")
    assert sorted(dry_run_jobs(out)) == sorted(jobs)
    assert out.count("Group job patch-0 ") == 1, out[-3000:]
    block = out.split("Group job patch-0 ", 1)[1].split("Group job ", 1)[0]
    assert block.count("rule patch_route:") == n_shards and "rule patch_floors:" not in block, block


def test_each_route_kind_gets_its_rules(root, gemma3_dir, corpus_path, tmp_path):
    """Dry run with one route of every kind: each kind's rule chain, one shared training-gold job."""
    copy_workflow(tmp_path, root)
    for f in ("r.npy", "r.site_ids.npy", "ex.parquet"):
        (tmp_path / f).write_bytes(b"")
    for d in ("ar-ckpt", "av-ckpt"):
        (tmp_path / d).mkdir()
    routes = {
        "f": {"kind": "file", "path": str(tmp_path / "r.npy")},
        "p": {"kind": "pca", "train_rows": [4, 8], "k": 2},
        "t": {"kind": "text_channel", "train_rows": [4, 8]},
        "ar": {"kind": "nla_ar", "checkpoint": "ar-ckpt", "explanations": str(tmp_path / "ex.parquet")},
        "av": {"kind": "nla_av", "checkpoint": "av-ckpt", "ar_checkpoint": "ar-ckpt"},
    }
    config = {"run": "t", "device": "cpu", "corpus": {"name": "c", "path": str(corpus_path), "column": "content", "rows": [0, 4]},
              "model": {"path": str(gemma3_dir), "layer": 2}, "routes": routes}
    (tmp_path / "config/config.yaml").write_text(yaml.safe_dump(config))
    jobs = dry_run_jobs(run_snakemake(tmp_path, "-n", *[f"results/t/L2/geometry/{r}.json" for r in routes]))
    by_route = {}
    for rule, route in jobs:
        by_route.setdefault(route, set()).add(rule)
    assert by_route["f"] == {"recon_file", "geometry"}
    assert by_route["p"] == {"recon_pca", "geometry"}
    assert by_route["t"] == {"recon_text_channel", "geometry"}
    assert by_route["ar"] == {"recon_nla_ar", "geometry"}
    assert by_route["av"] == {"explain_nla_av", "recon_nla_ar", "geometry"}
    assert sum(rule == "train_gold" for rule, _ in jobs) == 1


def test_a_named_sae_reruns_on_a_new_cached_revision(root, gemma3_dir, corpus_path, tmp_path, monkeypatch):
    """An `sae` route naming a SAELens release, read from a hub cache laid out as huggingface_hub does: it runs, a
    finished run plans nothing, the cache's main moving to a new commit reruns exactly the job that read the SAE
    (rules/common.smk: the revision is in its params), and an SAE missing from the cache stops the parse in one line."""
    import subprocess
    import sys

    from fixtures import lay_out_hub_cache
    from test_sae import random_tensors, reference_sae
    from test_sae_hub import _npz_bytes

    from causal_kl.sae_hub import release_sae

    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    found = release_sae("gemma-scope-2b-pt-res-canonical", "layer_2/width_16k/canonical")
    first = random_tensors(seed=7, d_in=64, d_sae=96)
    old = lay_out_hub_cache(cache, found["repo_id"], {f"{found['folder']}/params.npz": _npz_bytes(first)})
    work = tmp_path / "w"
    copy_workflow(work, root)
    routes = {"gs": {"kind": "sae", "release": "gemma-scope-2b-pt-res-canonical", "sae_id": "layer_{layer}/width_16k/canonical"}}
    write_config(work, tiny_config(corpus_path, gemma3_dir, routes=routes))
    target = "results/t/L2/sae/gs.json"
    run_snakemake(work, target, blocked=TORCH_ENV_BLOCKS)
    sparsity = json.loads((work / target).read_text())
    assert sparsity["sae_revision"] == f"{found['repo_id']}@{old}/{found['folder']}"
    assert sparsity["sae_path"] == "gemma-scope-2b-pt-res-canonical/layer_2/width_16k/canonical"
    sites = pd.read_parquet(work / "results/t/sites.parquet")
    gold = pd.read_parquet(work / "results/t/L2/gold.parquet").set_index("site_id").loc[sites.site_id]
    recon = pd.read_parquet(work / "results/t/L2/recon/gs.parquet").set_index("site_id").loc[sites.site_id]
    golds = np.stack(gold.activation.to_numpy())
    np.testing.assert_allclose(np.stack(recon.reconstruction.to_numpy()), reference_sae(golds, first, "jumprelu", apply_b_dec=False)[1],
                               rtol=1e-4, atol=1e-4)
    assert "Nothing to be done" in run_snakemake(work, "-n", target)

    new = lay_out_hub_cache(cache, found["repo_id"], {f"{found['folder']}/params.npz": _npz_bytes(random_tensors(seed=8, d_in=64, d_sae=96))})
    assert new != old
    assert dry_run_jobs(run_snakemake(work, "-n", target)) == [("recon_sae", "gs")]

    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "empty"), HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "-n", target], cwd=work, env=env,
                         capture_output=True, text=True, timeout=300)
    line = next(l for l in (out.stdout + out.stderr).splitlines() if l.startswith("causal-kl:"))
    assert out.returncode != 0 and "routes.gs.release" in line and "not in the Hugging Face cache" in line, out.stderr
    assert f'hf download {found["repo_id"]} --include "{found["folder"]}/*"' in line
