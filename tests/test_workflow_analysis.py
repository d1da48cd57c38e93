"""Snakemake-level: each figure builds alone, and editing a plotting parameter reruns only that figure.

A synthetic results/syn tree stands in for the upstream stages: a Snakefile in a temp dir
includes only common.smk, analysis.smk and report.smk, so the upstream files are sources.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from synthetic_results import make_results
from workflow_helpers import ANALYSIS_ENV_BLOCKS, blocked_imports_env

pytestmark = pytest.mark.slow

FIG1 = "results/syn/L3/figures/toy/fig1_geometry_vs_kl.png"
FIG3 = "results/syn/L3/figures/toy/fig3_kl_by_offset.png"


def _snakemake(wd, *args, env=None):
    """Snakemake with torch, transformers and friends unimportable, as in envs/analysis.yaml: every rule and
    job here (and the Snakefile's own parsing) must work without them."""
    cmd = [sys.executable, "-m", "snakemake", "--cores", "1", *args]
    res = subprocess.run(cmd, cwd=wd, capture_output=True, text=True, timeout=600,
                         env=blocked_imports_env(ANALYSIS_ENV_BLOCKS, env))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout + res.stderr


def _planned(out: str) -> dict[str, int]:
    """Rule -> job count from a dry run's 'Job stats' table ({} when nothing to be done)."""
    m = re.search(r"Job stats:\n(.*?)\ntotal", out, re.S)
    if not m:
        return {}
    rows = [line.split() for line in m.group(1).splitlines()[2:] if line.strip()]
    return {r[0]: int(r[1]) for r in rows}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, root):
    wd = tmp_path_factory.mktemp("wf")
    make_results(wd, routes=("toy", "toy2"))  # the config names toy2 only in the last test
    (wd / "recon.parquet").touch()
    (wd / "Snakefile").write_text(
        'configfile: "config.yaml"\n'
        + "".join(f'include: "{root}/rules/{f}.smk"\n' for f in ("common", "tables", "statistics", "figures", "report"))
        + "rule all:\n    input: analysis_targets(3)\n"
        # as the Snakefile does: the analysis jobs of these runs are forked from the analysis server
        + "onstart:\n    start_analysis_server(workflow, config, CLUSTER_GROUPS)\n"
        + "onsuccess:\n    stop_analysis_server()\n"
        + "onerror:\n    stop_analysis_server()\n"
    )
    # parse-time checks read the model's config.json only (no weights, no torch): a folder holding just that will do
    (wd / "model").mkdir()
    (wd / "model" / "config.json").write_text(
        '{"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "num_hidden_layers": 6}')
    cfg = {"run": "syn", "corpus": {"name": "syn", "column": "content", "rows": [0, 6]},
           "model": {"path": str(wd / "model"), "layer": 3},
           "routes": {"toy": {"kind": "file", "path": str(wd / "recon.parquet")}},
           "analysis": {"bootstrap": 20},
           "whole_context": {"enabled": False}}  # its rule needs the model: not included here
    (wd / "config.yaml").write_text(yaml.safe_dump(cfg))
    return wd


def test_a_figure_builds_alone(workdir):
    plan = _planned(_snakemake(workdir, "-n", FIG1))
    assert {k: v for k, v in plan.items() if k != "total"} == {"error_norms": 1, "per_site": 1,
                                                               "stat_correlation": 1, "fig1_route": 1}
    plan = _planned(_snakemake(workdir, "-n", "results/syn/L3/figures/fig1_geometry_vs_kl.png"))
    assert set(plan) - {"total"} == {"error_norms", "per_site", "stat_correlation", "fig1_all"}
    plan = _planned(_snakemake(workdir, "-n", "results/syn/L3/tables/toy/offsets.csv"))
    assert set(plan) - {"total"} == {"table_offsets"}


def test_editing_a_plot_parameter_reruns_only_that_figure(workdir):
    _snakemake(workdir, FIG1, FIG3)
    assert _planned(_snakemake(workdir, "-n", FIG1, FIG3)) == {}
    cfg = yaml.safe_load((workdir / "config.yaml").read_text())
    cfg["analysis"]["figures"] = {"fig1": {"point_size": 30}}
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    plan = _planned(_snakemake(workdir, "-n", FIG1, FIG3))
    assert set(plan) - {"total"} == {"fig1_route"}
    # and a statistic's parameter reruns that statistic and what shows it, not the per-site table
    cfg["analysis"]["bootstrap"] = 21
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    plan = _planned(_snakemake(workdir, "-n", FIG1, FIG3))
    assert set(plan) - {"total"} == {"fig1_route"}  # neither figure uses the bootstrap


def test_adding_a_route_writes_its_pages_and_the_main_page_not_the_other_routes_pages(workdir):
    main, toy = "results/syn/report.html", "results/syn/report/L3/toy.html"
    _snakemake(workdir, main)
    page = (workdir / toy).read_text()
    assert "href='report/L3/toy.html'" in (workdir / main).read_text() and "../../report.html#comparison-3" in page
    cfg = yaml.safe_load((workdir / "config.yaml").read_text())
    cfg["routes"]["toy2"] = {"kind": "file", "path": str(workdir / "recon.parquet")}
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    out = _snakemake(workdir, "-n", main)
    pages = re.findall(r"rule report_route:.*?wildcards: ([^\n]*)", out, re.S)
    assert pages == ["layer=3, route=toy2"], pages
    assert {"report_html", "table_routes", "table_frontier", "fig_frontier"} <= set(_planned(out))
    _snakemake(workdir, main)
    assert (workdir / toy).read_text() == page and "href='report/L3/toy2.html'" in (workdir / main).read_text()


TABLES = [f"results/syn/L3/tables/toy/{t}.csv" for t in ("conditions", "quartiles", "offsets", "token_classes")]
STATS = [f"results/syn/L3/stats/toy/{s}.json" for s in ("correlation", "paired", "energy", "floor_offsets")]


def test_the_analysis_server_changes_no_output(workdir, tmp_path):
    """The per-site table, the tables and the statistics built by jobs forked from the analysis server (the runs
    above) equal those the same jobs write in their own processes (CAUSAL_KL_ANALYSIS_SERVER=0), rebuilt in a copy."""
    import os

    import pyarrow.parquet as pq

    targets = ["results/syn/L3/analysis/toy/per_site.parquet", *TABLES, *STATS, "results/syn/L3/stats/toy.json"]
    _snakemake(workdir, *targets)
    log = (workdir / "logs/syn/analysis_server.log").read_text()
    assert "listening at" in log and "stats_route: causal_kl.jobs.statistics:stats_route in child" in log, log
    copy = tmp_path / "wf"
    shutil.copytree(workdir, copy, symlinks=True)
    out = _snakemake(copy, "--forceall", *targets, env=dict(os.environ, CAUSAL_KL_ANALYSIS_SERVER="0"))
    assert {"per_site", "table_conditions", "stats_route"} <= set(re.findall(r"rule (\w+):", out))
    assert (copy / "logs/syn/analysis_server.log").read_text() == log  # no server was started in the copy
    for t in targets:
        a, b = workdir / t, copy / t
        assert b.stat().st_mtime > a.stat().st_mtime, t  # rebuilt
        if t.endswith(".parquet"):
            assert pq.read_table(a).equals(pq.read_table(b)), t  # the rows; the provenance's timestamps differ
        elif t.endswith(".json"):
            assert json.loads(a.read_text()) == json.loads(b.read_text()), t
        else:
            assert a.read_text() == b.read_text(), t
