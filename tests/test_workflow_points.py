"""Workflow level: a route at a hook inside block L (issue #28) gets everything a residual route gets, at its point.

Its outputs live under ``results/{run}/L{layer}.{hook}/`` with their own golds, conditions and floors (in the hook's
space); a residual-stream config plans exactly what it planned before (its points are its layers).
"""

import json
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


def _saelens_saes(tmp_path):
    """An MLP-out SAE, an attention (hook_z) SAE and a skip transcoder (mlp_in -> mlp_out) at block 2 of the tests'
    tiny Gemma-3 (d 64, 4 heads x 16), written by SAELens itself; their routes name no hook: it is read from the files."""
    import sae_lens
    import torch
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(0)
    made = {}
    for name, hook in (("sae_mlp", "blocks.2.hook_mlp_out"), ("sae_z", "blocks.2.attn.hook_z")):
        sae = sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=64, d_sae=128, metadata=SAEMetadata(hook_name=hook)))
        sae.save_model(tmp_path / name)
        made[name] = sae
    tc = sae_lens.SkipTranscoder(sae_lens.SkipTranscoderConfig(
        d_in=64, d_sae=128, d_out=64, apply_b_dec_to_input=False, metadata=SAEMetadata(hook_name="blocks.2.hook_mlp_in",
                                                           hook_name_out="blocks.2.hook_mlp_out")))
    with torch.no_grad():
        tc.W_skip.normal_(0, 0.05)  # SAELens starts it at zero: a skip term that does something
    tc.save_model(tmp_path / "tc")
    made["tc"] = tc
    return made, {name: {"kind": "sae", "path": str(tmp_path / name), "spans": [1]} for name in made}


@pytest.mark.slow
def test_routes_at_mlp_out_and_attn_z_run_to_their_routes_tables(root, gemma3_dir, corpus_path, tmp_path):
    """The real chain at sublayer points (one shared run, about 2 min on 2 shared cores): golds and training golds
    extracted at mlp_out, attn_z and (for the transcoder's input) mlp_in; each point's floors and its routes' patches
    spliced there; geometry in the hook's space; routes tables; whole-context scores at the hook (a transcoder reading
    mlp_in and writing mlp_out). SAE routes splice where their SAELens files say."""
    import numpy as np
    import pandas as pd
    import torch

    from causal_kl.io import read_gold, read_provenance, read_recon

    copy_workflow(tmp_path, root)
    made, sae_routes = _saelens_saes(tmp_path)
    config = tiny_config(corpus_path, gemma3_dir, routes={"mlp": AT_MLP_OUT["mlp"], **sae_routes},
                         whole_context={"n_contexts": 2, "n_ctx": 64}, analysis={"bootstrap": 20})
    write_config(tmp_path, config)
    run_snakemake(tmp_path, "results/t/L2.mlp_out/tables/routes.csv", "results/t/L2.attn_z/tables/routes.csv",
                  "results/t/L2.mlp_out/whole_context/tc.json", "results/t/L2.attn_z/whole_context/sae_z.json")
    P = tmp_path / "results/t/L2.mlp_out"
    routes = pd.read_csv(P / "tables/routes.csv").set_index("route")
    assert sorted(routes.index) == ["mlp", "sae_mlp", "tc"] and np.isfinite(routes["recon_kl0_median"]).all()
    z = pd.read_csv(tmp_path / "results/t/L2.attn_z/tables/routes.csv").set_index("route")
    assert list(z.index) == ["sae_z"] and np.isfinite(z.loc["sae_z", "recon_kl0_median"])
    # the transcoder's reconstruction is SAELens' own forward on the golds of its input hook (mlp_in)
    gold_ids, gold_in = read_gold(tmp_path / "results/t/L2.mlp_in/gold.parquet")
    rec_ids, rec = read_recon(P / "recon/tc.parquet")
    order = {int(s): i for i, s in enumerate(gold_ids)}
    with torch.no_grad():
        want = made["tc"](torch.from_numpy(gold_in[[order[int(s)] for s in rec_ids]])).numpy()
    np.testing.assert_allclose(rec, want, atol=1e-5)
    # and the SAE at hook_z reconstructs golds of the heads' width at that point
    _, z_gold = read_gold(tmp_path / "results/t/L2.attn_z/gold.parquet")
    assert z_gold.shape[1] == 4 * 16
    wc = json.loads((P / "whole_context/tc.json").read_text())
    assert (wc["hook"], wc["hook_in"]) == ("mlp_out", "mlp_in") and np.isfinite(wc["kl_div_score"])
    assert json.loads((tmp_path / "results/t/L2.attn_z/whole_context/sae_z.json").read_text())["hook"] == "attn_z"
    meta = read_provenance(P / "gold.parquet")
    assert (meta["layer"], meta["hook"], meta["point"]) == (2, "mlp_out", "2.mlp_out")
    floors = pd.read_parquet(P / "span1/patch/floors.parquet")
    assert {"gold", "zero", "mean", "resample_cross_doc"} <= set(floors.condition.astype(str))
    # the MLP's own output spliced back changes nothing: the gold re-patch floor is (numerically) zero
    assert floors.loc[floors.condition.astype(str) == "gold", "kl"].abs().max() < 1e-4
    # the residual stream of block 2 was never extracted: the point's golds are its own
    assert not (tmp_path / "results/t/L2/gold.parquet").exists()
