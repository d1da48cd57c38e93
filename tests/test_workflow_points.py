"""Workflow level: a route at a hook inside block L (issue #28) gets everything a residual route gets, at its point.

Its outputs live under ``results/{run}/L{layer}.{hook}/`` with their own golds, conditions and floors (in the hook's
space); a residual-stream config plans exactly what it planned before (its points are its layers).
"""

import re

import pytest

import yaml

from workflow_helpers import copy_workflow, dry_run_blocks, run_snakemake, tiny_config, write_config

RESIDUAL = {"res": {"kind": "pca", "train_rows": [4, 8], "k": 2}}
AT_MLP_OUT = {
    "mlp": {"kind": "pca", "train_rows": [4, 8], "k": 2, "hook": "mlp_out"},
    "fmlp": {"kind": "file", "path": "r_L{layer}.npy", "hook": "mlp_out"},
}


def _plan(workdir, config):
    write_config(workdir, config)
    return {(rule, re.sub(r"\s+", " ", m.group(1)) if (m := re.search(r"output: ([^\n]+)", text)) else "")
            for rule, _, text in dry_run_blocks(run_snakemake(workdir, "-n"))}


def test_a_route_at_mlp_out_plans_its_points_jobs_and_a_residual_plan_is_unchanged(root, gemma3_dir, corpus_path, tmp_path):
    copy_workflow(tmp_path, root)
    for f in ("r_L2.npy", "r_L2.site_ids.npy"):
        (tmp_path / f).write_bytes(b"")
    config = tiny_config(corpus_path, gemma3_dir, routes=RESIDUAL)
    write_config(tmp_path, config)
    run_snakemake(tmp_path, "results/t/sites.parquet")  # the checkpoint: the dry runs then list every shard's jobs
    residual = _plan(tmp_path, config)
    assert residual and not any(".mlp_out" in out for _, out in residual)

    mixed = _plan(tmp_path, {**config, "routes": {**RESIDUAL, **AT_MLP_OUT}})
    # every job of the residual plan is planned as it was, with the same outputs
    assert residual <= mixed, sorted(residual - mixed)
    new = mixed - residual
    point = "results/t/L2.mlp_out/"
    by_rule = {}
    for rule, out in new:
        by_rule.setdefault(rule, []).append(out)
    # the point's own golds, conditions and floors (every shard), and each route's reconstruction and patches there
    for rule in ("gold", "gold_aggregate", "conditions", "patch_floors", "patch_route", "recon_pca", "recon_file",
                 "geometry", "train_gold", "gate", "table_routes", "table_frontier", "report_route"):
        assert rule in by_rule, (rule, sorted(by_rule))
        assert all(point in out or "report/L2.mlp_out/" in out for out in by_rule[rule]), (rule, by_rule[rule])
    n_shards = len(by_rule["gold"])
    assert n_shards == 2 and len(by_rule["patch_floors"]) == n_shards and len(by_rule["patch_route"]) == 2 * n_shards
    assert any("/patch/mlp/" in o for o in by_rule["patch_route"]) and any("/patch/fmlp/" in o for o in by_rule["patch_route"])
    # no stored-gold conversion at the point (an NLA base.parquet is the residual stream), no across-layers outputs
    assert "stored_gold" not in by_rule and not any("tables/layers" in o for outs in by_rule.values() for o in outs)
    # the run-level jobs that read every point: the report's main page (and the run record: its config changed)
    changed = {rule for rule, out in new if point not in out and "report/L2.mlp_out/" not in out}
    assert changed <= {"report_html", "run_record"}, changed


def test_a_target_at_a_point_the_run_lacks_is_one_line(root, gemma3_dir, corpus_path, tmp_path):
    copy_workflow(tmp_path, root)
    for f in ("r_L2.npy", "r_L2.site_ids.npy"):
        (tmp_path / f).write_bytes(b"")
    write_config(tmp_path, tiny_config(corpus_path, gemma3_dir, routes=AT_MLP_OUT))
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "snakemake", "-n", "results/t/L2.attn_out/gold.parquet"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert res.returncode != 0 and "L2.attn_out is not a point of this run" in res.stderr and "L2.mlp_out" in res.stderr, \
        res.stderr[-2000:]
    cfg = yaml.safe_load((tmp_path / "config/config.yaml").read_text())
    assert "hook" not in RESIDUAL["res"] and cfg["routes"]["mlp"]["hook"] == "mlp_out"


@pytest.mark.slow
def test_a_pca_route_at_mlp_out_runs_to_its_routes_table(root, gemma3_dir, corpus_path, tmp_path):
    """The real chain at a sublayer point (about 50 s on 2 shared cores): golds and training golds extracted at mlp_out, the
    point's floors and the route's patches spliced there, its geometry in the hook's space, its routes table."""
    import numpy as np
    import pandas as pd

    from causal_kl.io import read_provenance

    copy_workflow(tmp_path, root)
    config = tiny_config(corpus_path, gemma3_dir, routes={"mlp": AT_MLP_OUT["mlp"]}, whole_context={"enabled": False},
                         analysis={"bootstrap": 20})
    write_config(tmp_path, config)
    run_snakemake(tmp_path, "results/t/L2.mlp_out/tables/routes.csv")
    P = tmp_path / "results/t/L2.mlp_out"
    routes = pd.read_csv(P / "tables/routes.csv").set_index("route")
    assert list(routes.index) == ["mlp"] and np.isfinite(routes.loc["mlp", "recon_kl0_median"])
    meta = read_provenance(P / "gold.parquet")
    assert (meta["layer"], meta["hook"], meta["point"]) == (2, "mlp_out", "2.mlp_out")
    floors = pd.read_parquet(P / "span1/patch/floors.parquet")
    assert {"gold", "zero", "mean", "resample_cross_doc"} <= set(floors.condition.astype(str))
    # the MLP's own output spliced back changes nothing: the gold re-patch floor is (numerically) zero
    assert floors.loc[floors.condition.astype(str) == "gold", "kl"].abs().max() < 1e-4
    # the residual stream of block 2 was never extracted: the point's golds are its own
    assert not (tmp_path / "results/t/L2/gold.parquet").exists()
