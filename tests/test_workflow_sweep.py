"""Workflow level: a layer sweep with spans and an SAE suite, end to end, in one shared run.

One run of the real Snakefile on the tiny Gemma-3 (layers 1 and 2; spans 1 and 16; an ``sae`` route given as a
suite, one SAELens folder per layer; a ``file`` route keyed by site id at layer 2 only) builds everything up to the
report. Single-layer runs of the same config (other run names, same work folder) then show that a sweep equals two
single-layer runs, that a span of 1 is the same with or without longer spans beside it, and that adding a layer
plans only that layer's jobs. Spans past the document's end are excluded and counted; a route whose file has no
vectors at a span's extra positions is skipped with its reason; recorded span choices rerun bit-identically.
"""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from causal_kl.io import read_provenance
from workflow_helpers import assert_params_canonical, copy_workflow, dry_run_blocks, run_snakemake, tiny_config

pytestmark = pytest.mark.slow

LAYERS = [1, 2]
SPAN = 16
RUN_LEVEL_RULES = {"run_record", "report_html", "table_layers", "fig_layers", "table_frontier_layers", "fig_frontier_layers",
                   "all"}
"""Jobs of the run itself (not of one layer): adding a layer reruns these too."""


def _sweep_config(corpus_path, gemma3_dir, sae_dir, file_route):
    # documents cut at 80 tokens, sites at positions 50-79: a span of 16 runs past the end from position 65 on
    sites = {"positions_per_doc": 3, "min_position": 50, "max_length": 80, "max_sites": 12, "shard_size": 6}
    config = tiny_config(corpus_path, gemma3_dir, sites=sites)
    config.update(run="sweep", model={"path": str(gemma3_dir), "layer": LAYERS},
                  corpus=dict(config["corpus"], rows=[0, 4]), patch={"spans": [1, SPAN]},
                  whole_context={"n_ctx": 32, "n_contexts": 4, "batch_size": 2},
                  analysis={"bootstrap": 20},
                  routes={"sae": {"kind": "sae", "path": str(sae_dir / "L{layer}")},
                          "vec": {"kind": "file", "path": str(file_route), "layer": 2}})
    return config


def _write(wd, name, config):
    (wd / name).write_text(yaml.safe_dump(config, sort_keys=False))
    return name


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, root, gemma3_dir, corpus_path):
    """The sweep run, built to its report; returns the work folder, its config and helpers' inputs."""
    from causal_kl.demo.sae import SAETrainConfig, write_demo_sae

    wd = copy_workflow(tmp_path_factory.mktemp("sweep"), root)
    rng = np.random.default_rng(0)
    for layer in LAYERS:  # a suite: one SAE per layer, SAELens' format, hook blocks.L.hook_resid_post
        write_demo_sae(rng.standard_normal((300, 64)).astype(np.float32), wd / "sae" / f"L{layer}", layer,
                       SAETrainConfig(expansion=2, k=8, steps=30, batch_size=64))
    # the file route's vectors are written once the sites exist (they are keyed by site id)
    config = _sweep_config(corpus_path, gemma3_dir, wd / "sae", wd / "vec.parquet")
    pq.write_table(pd.DataFrame({"site_id": [0], "reconstruction": [[0.0] * 64]}).pipe(_to_arrow), wd / "vec.parquet")
    cfg = _write(wd, "sweep.yaml", config)
    run_snakemake(wd, "results/sweep/sites.parquet", "results/sweep/L2/gold.parquet", "--configfile", cfg)
    sites = pd.read_parquet(wd / "results/sweep/sites.parquet")
    gold = pd.read_parquet(wd / "results/sweep/L2/gold.parquet").set_index("site_id").loc[sites.site_id]
    vec = np.stack(gold.activation.to_numpy()) + 0.3 * rng.standard_normal((len(sites), 64))
    pq.write_table(_to_arrow(pd.DataFrame({"site_id": sites.site_id, "reconstruction": list(vec.astype(np.float32))})),
                   wd / "vec.parquet")
    run_snakemake(wd, "--configfile", cfg, timeout=1800)
    return {"wd": wd, "config": config, "R": wd / "results/sweep", "sites": sites}


def _to_arrow(df):
    import pyarrow as pa

    return pa.Table.from_pandas(df, preserve_index=False)


def test_sweep_runs_to_its_report_with_every_section(sweep):
    R = sweep["R"]
    report = (R / "report.html").read_text()
    for anchor in ("id='layers'", "id='frontier-layers'", "id='comparison-1'", "id='comparison-2'", "id='frontier-1'",
                   "id='route-L1-sae'", "id='route-L2-sae'", "id='route-L2-vec'"):
        assert anchor in report, anchor
    # each route's details on its own page, linked from the main page and back
    for layer, route, anchor in ((1, "sae", "saelens-L1-sae"), (2, "sae", "spans-L2-sae"), (2, "vec", "conditions-L2-vec")):
        page = (R / f"report/L{layer}/{route}.html").read_text()
        assert f"id='{anchor}'" in page and f"href='../../report.html#comparison-{layer}'" in page
        assert f"href='report/L{layer}/{route}.html'" in report
    assert "route-L1-vec" not in report and not (R / "report/L1/vec.html").exists()  # the file route is pinned to L2
    frontier = pd.read_csv(R / "tables/frontier.csv")
    assert set(zip(frontier.layer, frontier.route)) == {(1, "sae"), (2, "sae"), (2, "vec")}
    assert frontier.loc[frontier.route == "vec", "l0"].isna().all() and not frontier.frontier_l0_kl0[frontier.route == "vec"].any()
    layers = pd.read_csv(R / "tables/layers.csv")
    assert set(layers.layer) == set(LAYERS) and {"sae", "vec", ""} <= set(layers.route.fillna(""))
    routes = pd.read_csv(R / "L2/tables/routes.csv").set_index("route")
    # SAELens' scores for the SAE; the file route has vectors only at its sites: no whole-context score, and why
    assert np.isfinite(routes.loc["sae", "saelens_kl_div_score"]) and np.isfinite(routes.loc["sae", "sae_l0"])
    assert np.isnan(routes.loc["vec", "saelens_kl_div_score"]) and "keys its rows by site_id" in routes.loc["vec", "saelens_skipped"]
    sp = json.loads((R / "L1/sae/sae.json").read_text())
    assert sp["d_sae"] == 128 and 0 < sp["l0"] <= 8 and 0 <= sp["dead_share"] <= 1


def test_every_recorded_param_of_the_run_is_canonical(sweep):
    """Up to the report (tables, statistics, figures, the report's manifest): each param Snakemake recorded is the
    repr of a canonical value, so a config given in another key order plans nothing (tests/test_workflow_reruns.py)."""
    params = assert_params_canonical(sweep["wd"])
    assert {"sites", "recon_sae", "table_conditions", "fig1_route", "gate", "report_html"} <= set(params)


def test_spans_past_the_document_end_are_excluded_and_counted(sweep):
    R, sites = sweep["R"], sweep["sites"]
    docs = pd.read_parquet(R / "docs.parquet").set_index("doc_id")
    n_tokens = sites.doc_id.map(docs.n_tokens)
    fits = sites.position + SPAN - 1 <= n_tokens - 1  # every position of the span inside the document
    record = json.loads((R / f"L1/span{SPAN}/sites.json").read_text())
    assert record["n_excluded"] == int((~fits).sum()) > 0, "the fixture should exclude some spans"
    assert record["excluded_site_ids"] == sorted(sites.site_id[~fits].tolist())
    patch = pd.read_parquet(R / f"L1/span{SPAN}/patch/floors.parquet")
    assert set(patch.site_id) == set(sites.site_id[fits]) and (patch.span == SPAN).all()
    # offsets from the span's last position: inside the span -15..-1, after it 0..31
    assert patch.offset.min() == -(SPAN - 1) and patch.offset.max() <= 31
    spans = pd.read_csv(R / "L1/tables/sae/spans.csv")
    assert (spans.loc[spans.span == SPAN, "n_excluded"] == record["n_excluded"]).all()


def test_a_route_without_vectors_at_span_positions_is_skipped_with_its_reason(sweep):
    R = sweep["R"]
    reason = read_provenance(R / f"L2/span{SPAN}/recon/vec.parquet")["skipped"]
    assert "site_id" in reason
    assert pd.read_parquet(R / f"L2/span{SPAN}/patch/vec.parquet").empty
    assert not pd.read_parquet(R / f"L2/span{SPAN}/patch/sae.parquet").empty  # an SAE reconstructs any position
    assert "not computed for this span" in (R / "report/L2/vec.html").read_text()


def test_span_choices_and_noise_are_recorded_and_rerun_bit_identically(sweep):
    wd, R = sweep["wd"], sweep["R"]
    span = R / f"L1/span{SPAN}"
    before = {p: pd.read_parquet(span / p) for p in ("conditions/choices.parquet", "conditions/noise.parquet",
                                                      "patch/floors.parquet", "patch/sae.parquet")}
    for p in ("conditions/choices.parquet", "conditions/noise.parquet", "patch/floors/shard_000.parquet"):
        (span / p).unlink()
    run_snakemake(wd, "--configfile", "sweep.yaml")  # the plain command rebuilds what is missing, and what read it
    for p, df in before.items():
        pd.testing.assert_frame_equal(pd.read_parquet(span / p), df, check_exact=True)


def test_a_sweep_equals_single_layer_runs_and_a_span_of_one_ignores_longer_spans(sweep):
    """Layer 2 alone (spans [1] only) and layer 1 alone: their golds and patch tables equal the sweep's bit for bit."""
    wd, R = sweep["wd"], sweep["R"]
    for layer in LAYERS:
        single = copy.deepcopy(sweep["config"])
        single.update(run=f"single{layer}", model=dict(single["model"], layer=layer), patch={"spans": [1]})
        single["routes"] = {"sae": single["routes"]["sae"]}
        cfg = _write(wd, f"single{layer}.yaml", single)
        targets = [f"results/single{layer}/L{layer}/gold.parquet", f"results/single{layer}/L{layer}/patch.json"]
        run_snakemake(wd, *targets, "--configfile", cfg)
        S = wd / f"results/single{layer}/L{layer}"
        pd.testing.assert_frame_equal(pd.read_parquet(S / "gold.parquet"), pd.read_parquet(R / f"L{layer}/gold.parquet"),
                                      check_exact=True)
        for name in ("floors", "sae"):
            got = pd.read_parquet(S / f"span1/patch/{name}.parquet")
            pd.testing.assert_frame_equal(got, pd.read_parquet(R / f"L{layer}/span1/patch/{name}.parquet"), check_exact=True)


def test_adding_a_layer_plans_only_that_layers_jobs(sweep):
    wd = sweep["wd"]
    if not (wd / "results/single2/L2/patch.json").exists():
        pytest.skip("needs the single-layer run of the test before")
    grown = yaml.safe_load((wd / "single2.yaml").read_text())
    grown["model"]["layer"] = [1, 2]
    cfg = _write(wd, "single2_grown.yaml", grown)
    out = run_snakemake(wd, "-n", "results/single2/L1/patch.json", "results/single2/L2/patch.json",
                        "results/single2/L2/gold.parquet", "--configfile", cfg)
    jobs = []
    for rule, _, block in dry_run_blocks(out):
        w = re.search(r"wildcards: ([^\n]*)", block)
        jobs.append((rule, w.group(1) if w else ""))
    assert {"gold", "patch_floors", "conditions"} <= {r for r, _ in jobs} and "sites" not in {r for r, _ in jobs}
    for rule, wildcards in jobs:  # every job is of the new layer, or of the run itself
        assert "layer=1" in wildcards or rule in RUN_LEVEL_RULES, (rule, wildcards)
