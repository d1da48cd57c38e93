"""The production path as users run it: a --configfile run is that config alone, every check runs before the
first job, nothing is written outside results/, logs/ and the demo's resources/demo/, and a user's model folder
is never touched.

Snakemake is run on a copy of the real workflow (its real config/config.yaml, the demo, beside the run's own
config): the production config's plan must hold no demo rule, route or path.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from causal_kl import checks
from causal_kl.errors import CausalKLError
from workflow_helpers import ROOT, copy_workflow, dry_run_jobs, tiny_config

pytestmark = pytest.mark.slow

DEMO_RULES = {"demo_corpus", "demo_tokenizer", "demo_model", "demo_base"}
DEMO_ROUTES = {"pca", "text_channel"}


def snakemake(wd: Path, *args: str, ok: bool = True) -> str:
    res = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", *args], cwd=wd, capture_output=True,
                         text=True, timeout=600, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    out = res.stdout + res.stderr
    assert (res.returncode == 0) == ok, out[-3000:]
    return out


def tree_digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() + f"@{p.stat().st_mtime_ns}"
            for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def wd(tmp_path_factory, gemma3_dir, corpus_path):
    """A copy of the workflow (demo config included) and a user's own model folder and corpus beside it."""
    wd = copy_workflow(tmp_path_factory.mktemp("prod"))
    shutil.copytree(gemma3_dir, wd / "my_models" / "tiny")
    shutil.copy(corpus_path, wd / "my_corpus.parquet")
    cfg = tiny_config(Path("my_corpus.parquet"), Path("my_models/tiny"), run="mine")
    (wd / "mine.yaml").write_text(yaml.safe_dump(cfg))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": [""] * 30, "title": [f"t{i}" for i in range(30)]}), wd / "no_text.parquet")
    pq.write_table(pa.table({"content": pa.array([], pa.string())}), wd / "no_rows.parquet")
    # SAEs that do not fit the run: 32 wide for a 64-wide model; trained at layer 1, for a run at layer 2
    from causal_kl.demo.sae import SAETrainConfig, write_demo_sae

    import numpy as np

    small = SAETrainConfig(expansion=2, k=4, steps=5, batch_size=16)
    write_demo_sae(np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32), wd / "saes/narrow", 2, small)
    write_demo_sae(np.random.default_rng(1).standard_normal((64, 64)).astype(np.float32), wd / "saes/L2_of_1", 1, small)
    return wd


def test_production_config_plans_only_production_jobs(wd):
    out = snakemake(wd, "-n", "--configfile", "config/gemma3-27b.yaml")
    rules = {r for r, _ in dry_run_jobs(out)}
    assert "sites" in rules and not rules & DEMO_RULES, rules
    assert "resources/demo" not in out and "pca" not in out and "text_channel" not in out
    # and the demo, run the default way, still is the demo
    demo = {r for r, _ in dry_run_jobs(snakemake(wd, "-n"))}
    assert {"demo_corpus", "demo_model"} <= demo


def test_a_users_model_folder_survives_a_run_untouched(wd):
    before = tree_digest(wd / "my_models")
    snakemake(wd, "results/mine/L2/gold.parquet", "--configfile", "mine.yaml")  # --configfile takes every word after it
    assert tree_digest(wd / "my_models") == before
    assert not (wd / "resources").exists()  # no demo asset was built
    plan = dry_run_jobs(snakemake(wd, "-n", "--configfile", "mine.yaml"))
    assert not {r for r, _ in plan} & DEMO_RULES
    # a demo block beside a user's model path is refused before any job, the folder untouched
    bad = dict(yaml.safe_load((wd / "mine.yaml").read_text()), demo={})
    bad["corpus"]["path"] = "resources/demo/corpus.parquet"
    (wd / "bad.yaml").write_text(yaml.safe_dump(bad))
    out = snakemake(wd, "--configfile", "bad.yaml", ok=False)
    line = [ln for ln in out.splitlines() if ln.startswith("causal-kl:")]
    assert len(line) == 1 and "model.path" in line[0] and "resources/demo/model" in line[0] and "Fix:" in line[0]
    assert tree_digest(wd / "my_models") == before


def _workflow_outputs(wd: Path, configfile: str | None) -> list[str]:
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import (ConfigSettings, OutputSettings, Quietness, ResourceSettings,
                                          StorageSettings, WorkflowSettings)

    settings = ConfigSettings(configfiles=[wd / configfile] if configfile else [])
    with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        wf = api.workflow(resource_settings=ResourceSettings(cores=1), config_settings=settings,
                          storage_settings=StorageSettings(), workflow_settings=WorkflowSettings(),
                          snakefile=wd / "Snakefile", workdir=wd)._workflow
        return [(r.name, str(f)) for r in wf.rules for f in [*r.output, *r.log]]


def test_no_rule_writes_outside_results_logs_and_the_demos_resources(wd, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["snakemake", "-n"])  # parsed as a plan: no device or hub check
    everything = dict(yaml.safe_load((wd / "mine.yaml").read_text()))
    (wd / "r.npy").write_bytes(b"")
    (wd / "r.site_ids.npy").write_bytes(b"")
    (wd / "ex.parquet").write_bytes(b"")
    everything["routes"] = {"f": {"kind": "file", "path": "r.npy"}, "p": {"kind": "pca", "train_rows": [20, 30]},
                            "ar": {"kind": "nla_ar", "checkpoint": "org/ar", "explanations": "ex.parquet"},
                            "av": {"kind": "nla_av", "checkpoint": "org/av", "ar_checkpoint": "org/ar"}}
    (wd / "all_kinds.yaml").write_text(yaml.safe_dump(everything))
    for configfile in (None, "all_kinds.yaml", "config/gemma3-27b.yaml"):
        for rule, path in _workflow_outputs(wd, configfile):
            assert path.startswith(("results/", "logs/", "resources/demo/")), (configfile, rule, path)


@pytest.fixture
def run_config(wd):
    cfg = yaml.safe_load((wd / "mine.yaml").read_text())
    return copy.deepcopy(cfg)


def _check(wd, cfg, local_exec=True):
    import os

    from causal_kl.config import validate_config

    here = os.getcwd()
    os.chdir(wd)
    try:
        checks.check_run(validate_config(copy.deepcopy(cfg), "run.yaml"), "run.yaml", local_exec=local_exec)
    finally:
        os.chdir(here)


BAD = {
    "layer out of range": (lambda c: c["model"].update(layer=6), "model.layer", "6 decoder blocks"),
    "model path typo": (lambda c: c["model"].update(path="my_models/tinny"), "model.path", "does not exist"),
    "missing corpus": (lambda c: c["corpus"].update(path="nope.parquet"), "corpus.path", "does not exist"),
    "corpus column": (lambda c: c["corpus"].update(column="text"), "corpus.column", "not in the corpus"),
    "rows past the end": (lambda c: c["corpus"].update(rows=[25, 40]), "corpus.rows", "past the end"),
    "missing stored golds": (lambda c: c.update(gold={"stored": "base.parquet"}), "gold.stored", "does not exist"),
    "missing route file": (lambda c: c["routes"].update(f={"kind": "file", "path": "nope.npy"}), "routes.f.path",
                           "does not exist"),
    "training rows overlap": (lambda c: c["routes"].update(p={"kind": "pca", "train_rows": [2, 10]}), "train_rows",
                              "overlap the eval rows"),
    "cuda without a GPU": (lambda c: c.update(device="cuda"), "device", "no visible GPU"),
    "a layer listed twice": (lambda c: c["model"].update(layer=[2, 2]), "model.layer", "listed twice"),
    "a sweep layer out of range": (lambda c: c["model"].update(layer=[2, 7]), "model.layer", "6 decoder blocks"),
    "a route pinned to a layer not in the run": (
        lambda c: c["routes"].update(p={"kind": "pca", "train_rows": [10, 20], "layer": 3}), "routes.p.layer",
        "not a layer of the run"),
    "spans without the single-site splice": (lambda c: c.update(patch={"spans": [4, 16]}), "patch.spans", "lacks 1"),
    "a span longer than any document": (lambda c: c.update(patch={"spans": [1, 1000]}), "patch.spans",
                                        "span 1000 cannot fit any site"),
    "a route's span the run does not patch": (
        lambda c: c["routes"].update(p={"kind": "pca", "train_rows": [10, 20], "spans": [1, 8]}), "routes.p.spans",
        "[8] not among patch.spans"),
    "a route's spans without the single-site splice": (
        lambda c: c.update(patch={"spans": [1, 4]}) or c["routes"].update(p={"kind": "pca", "train_rows": [10, 20],
                                                                             "spans": [4]}), "routes.p.spans", "lacks 1"),
    "an SAE of another width": (lambda c: c["routes"].update(s={"kind": "sae", "path": "saes/narrow"}), "d_in",
                                "64"),
    "an SAE of another layer": (lambda c: c["routes"].update(s={"kind": "sae", "path": "saes/L{layer}_of_1"}),
                                "routes.s", "check_hook: false"),
    "a missing SAE": (lambda c: c["routes"].update(s={"kind": "sae", "path": "saes/L{layer}"}), "routes.s.path",
                      "does not exist"),
    "a hub model not in the cache, the hub off": (lambda c: c["model"].update(path="someorg/not-cached"), "model.path",
                                                  "hf download someorg/not-cached"),
    "a corpus whose text column is empty": (lambda c: c["corpus"].update(path="no_text.parquet"),
                                            "no_text.parquet: corpus.column", "'content' is empty in every row"),
    "a corpus of zero rows": (lambda c: c["corpus"].update(path="no_rows.parquet"), "no_rows.parquet: corpus.path",
                              "holds no rows"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_every_config_problem_is_one_line_before_any_job(wd, run_config, case, monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty cache
    edit, field, words = BAD[case]
    edit(run_config)
    with pytest.raises(CausalKLError) as e:
        _check(wd, run_config)
    msg = str(e.value)
    assert "\n" not in msg and field in msg and words in msg and "Fix:" in msg, msg
    assert "[0, 0]" not in msg  # a fix that is itself refused (rows within [0, 0]) is no fix


def test_flash_attention_is_refused_where_transformers_cannot_load_it(wd, run_config):
    """The model job's own load decides: where transformers cannot load the model with flash_attention_2 (no
    flash-attn, no GPU) the parse refuses it in one line; where it can, the parse lets it through."""
    from transformers import AutoModelForCausalLM

    try:
        AutoModelForCausalLM.from_pretrained(wd / "my_models/tiny", attn_implementation="flash_attention_2")
        loads = True
    except (ValueError, ImportError):
        loads = False
    run_config["model"]["attn_implementation"] = "flash_attention_2"
    run_config["device"] = "auto"
    if loads:
        _check(wd, run_config)
        return
    with pytest.raises(CausalKLError) as e:
        _check(wd, run_config)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("run.yaml: model.attn_implementation: flash_attention_2 cannot run here")
    assert "Fix: set model.attn_implementation: auto" in msg
    _check(wd, run_config, local_exec=False)  # a dry run or a cluster submission: the jobs run elsewhere


def test_the_job_would_fail_where_the_parse_time_checks_refuse(wd, run_config, tmp_path):
    """The refusals above are the jobs' own failures, said earlier: transformers cannot load the uncached hub id
    offline; the sites job finds no text in the empty column."""
    from transformers import AutoConfig

    from causal_kl.sites import load_corpus_rows

    with pytest.raises(OSError):
        AutoConfig.from_pretrained("someorg/not-cached", cache_dir=str(tmp_path / "hub"), local_files_only=True)
    rows = load_corpus_rows({**run_config["corpus"], "path": str(wd / "no_text.parquet")})
    assert len(rows) == 4 and not any(text.strip() for _, text in rows)
    with pytest.raises(CausalKLError, match="holds no rows"):
        load_corpus_rows({**run_config["corpus"], "path": str(wd / "no_rows.parquet")})


def test_a_cached_hub_model_passes_and_an_unreachable_hub_is_one_line(wd, run_config, monkeypatch, tmp_path):
    """A hub id is fine when its files are in the cache (laid out as huggingface_hub downloads them; transformers
    reads the config from there offline), or when the hub answers; with neither, one line gives `hf download`."""
    from transformers import AutoConfig

    import fixtures

    cache = tmp_path / "hub"
    fixtures.lay_out_hub_cache(cache, "org/tiny", {"config.json": (wd / "my_models/tiny/config.json").read_bytes()})
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert AutoConfig.from_pretrained("org/tiny", cache_dir=str(cache), local_files_only=True).model_type
    checks.check_hub_id("org/tiny", "run.yaml")  # cached: no error, offline
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: the hub cannot be reached
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with pytest.raises(CausalKLError) as e:
        checks.check_hub_id("org/other", "run.yaml")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("run.yaml: model.path: 'org/other'") and "cannot be reached" in msg
    assert "Fix: download it into the cache once where the hub is reachable: hf download org/other" in msg


def test_not_a_causal_lm_is_refused_from_its_config_json(wd, run_config, tmp_path):
    enc = tmp_path / "bert"
    enc.mkdir()
    (enc / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert",
                                                 "num_hidden_layers": 4}))
    run_config["model"]["path"] = str(enc)
    with pytest.raises(CausalKLError, match=r"architectures: BertModel .* not a causal language model"):
        _check(wd, run_config)


def test_parse_time_checks_stop_snakemake_and_validate_says_the_same(wd, run_config):
    """Wired where the workflow is parsed: no job runs, nothing is written; `causal-kl validate` agrees."""
    run_config["model"]["layer"] = 9
    run_config["run"] = "badlayer"
    (wd / "badlayer.yaml").write_text(yaml.safe_dump(run_config))
    out = snakemake(wd, "--configfile", "badlayer.yaml", ok=False)
    lines = [ln for ln in out.splitlines() if ln.startswith("causal-kl:")]
    assert len(lines) == 1 and "model.layer" in lines[0] and "badlayer.yaml" in lines[0], out[-2000:]
    assert not (wd / "results/badlayer").exists()
    res = subprocess.run([sys.executable, "-m", "causal_kl.cli", "validate", "badlayer.yaml"], cwd=wd,
                         capture_output=True, text=True)
    assert res.returncode == 1 and res.stderr.strip() == lines[0]


def test_a_target_for_an_unconfigured_route_is_one_line(wd):
    out = snakemake(wd, "-n", "results/mine/L2/tables/nosuch/conditions.csv", "--configfile", "mine.yaml", ok=False)
    lines = [ln for ln in out.splitlines() if ln.startswith("causal-kl:")]
    assert len(lines) == 1 and "'nosuch' is not a route of layer 2 of this run" in lines[0] and "Traceback" not in out


def test_invalid_yaml_names_line_and_column(wd, tmp_path):
    broken = copy_workflow(tmp_path / "wf")
    (broken / "config/config.yaml").write_text("run: demo\nseed: [42\n")
    out = snakemake(broken, "-n", ok=False)
    lines = [ln for ln in out.splitlines() if ln.startswith("causal-kl:")]
    assert len(lines) == 1 and "config/config.yaml" in lines[0] and "line 3, column 1" in lines[0], out[-1500:]
    res = subprocess.run([sys.executable, "-m", "causal_kl.cli", "validate", "config/config.yaml"], cwd=broken,
                         capture_output=True, text=True)
    assert res.returncode == 1 and "line 3, column 1" in res.stderr


def test_config_file_problems_are_one_line_before_snakemake_reads_the_file(wd, tmp_path):
    """Snakemake loads --configfile before the Snakefile (a target after it: FileNotFoundError traceback; bad YAML:
    "not valid JSON or YAML"); the workflow profile (profiles/default) reads them first, with causal-kl's reading."""
    broken = copy_workflow(tmp_path / "wf")
    (broken / "bad.yaml").write_text("run: mx\nmodel:\n  path: m\n  layer: [2\n")
    (broken / "mine.yaml").write_text((wd / "mine.yaml").read_text())
    for args, words in ((["--configfile", "bad.yaml"], "bad.yaml: line 5, column 1: not valid YAML"),
                        (["--configfile", "mine.yaml", "results/mine/L2/gate.json"],
                         "results/mine/L2/gate.json: --configfile: this target was read as a config file")):
        out = snakemake(broken, "-n", *args, ok=False)
        lines = [ln for ln in out.splitlines() if ln.startswith("causal-kl:")]
        assert len(lines) == 1 and words in lines[0] and "Fix:" in lines[0] and "Traceback" not in out, out[-1500:]
    # causal-kl validate reads the file alike (yaml's own mark: the unclosed list runs to the end of the file)
    res = subprocess.run([sys.executable, "-m", "causal_kl.cli", "validate", "bad.yaml"], cwd=broken,
                         capture_output=True, text=True)
    assert res.returncode == 1 and "line 5, column 1" in res.stderr
    with pytest.raises(yaml.YAMLError) as e:
        yaml.safe_load((broken / "bad.yaml").read_text())
    assert (e.value.problem_mark.line + 1, e.value.problem_mark.column + 1) == (5, 1)


@pytest.mark.parametrize("argv, words", [
    (["-n", "--configfile", "mine.yaml", "results/mine/L2/gate.json"], "name targets before --configfile: snakemake "
     "results/mine/L2/gate.json --configfile mine.yaml"),
    (["--configfile", "mine.yaml", "all"], "this target was read as a config file"),
    (["--configfiles=nothere.yaml"], "nothere.yaml: config file not found"),
])
def test_a_config_file_argument_that_is_no_config_file_is_one_line(wd, monkeypatch, argv, words):
    monkeypatch.chdir(wd)
    with pytest.raises(CausalKLError) as e:
        checks.check_configfiles(argv)
    msg = str(e.value)
    assert "\n" not in msg and words in msg and "Fix:" in msg, msg


def test_good_config_file_arguments_pass(wd, monkeypatch):
    monkeypatch.chdir(wd)
    (wd / "tabs.json").write_text(json.dumps(yaml.safe_load((wd / "mine.yaml").read_text()), indent="\t"))
    with pytest.raises(yaml.YAMLError):  # no YAML, yet a config file Snakemake reads (as JSON)
        yaml.safe_load((wd / "tabs.json").read_text())
    checks.check_configfiles(["--configfile", "tabs.json"])
    for argv in (["-n"], ["results/mine/L2/gate.json", "--configfile", "mine.yaml", "--cores", "2"],
                 ["--config", "seed=7", "--configfile", "mine.yaml", "config/config.yaml"]):
        checks.check_configfiles(argv)


def test_a_shard_target_before_the_sites_says_what_to_build_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shard = "results/mine/L2/span1/patch/floors/shard_000.parquet"
    with pytest.raises(CausalKLError) as e:
        checks.check_shard_targets(["-n", shard], "results/mine")
    msg = str(e.value)
    assert msg.startswith(f"{shard}: target: ") and "snakemake results/mine/sites.json" in msg, msg
    assert "or ask for results/mine/L2/span1/patch/floors.parquet" in msg and "\n" not in msg
    checks.check_shard_targets(["results/mine/L2/gold.parquet", "results/other/L2/gold/shard_000.parquet"],
                               "results/mine")  # not a shard of this run: not this check's
    (tmp_path / "results/mine").mkdir(parents=True)
    (tmp_path / "results/mine/sites.json").write_text(json.dumps({"n_shards": 2}))
    checks.check_shard_targets(["results/mine/L2/gold/shard_001.parquet"], "results/mine")


def test_cli_help_is_plain_text():
    res = subprocess.run([sys.executable, "-m", "causal_kl.cli", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0 and "``" not in res.stdout and "validate" in res.stdout


@pytest.mark.parametrize("target, field, words", [
    ("results/mine/L5/gold.parquet", "layer", "layer 5 is not a layer of this run"),
    ("results/mine/L2/span4/patch/floors.parquet", "span", "span 4 is not a span of this run"),
    ("results/mine/L2/recon/pca.parquet", "route", "'pca' is not a route of layer 2"),
    ("results/mine/L1/recon/vec.parquet", "route", "it reconstructs layer 2"),
    ("results/mine/tables/pca/conditions.csv", "layer", "ask for results/mine/L1/tables/pca/conditions.csv"),
    ("results/mine/L2/patch.parquet", "target", "ask for results/mine/L2/patch.json"),
    ("results/mine/report/L1/vec.html", "route", "it reconstructs layer 2"),
    ("results/mine/report/L7/vec.html", "layer", "layer 7 is not a layer of this run"),
])
def test_a_target_the_run_does_not_have_is_one_line(target, field, words):
    with pytest.raises(CausalKLError) as e:
        checks.check_targets([target], "results/mine", {1: [], 2: ["vec"]}, [1, 16])
    msg = str(e.value)
    assert "\n" not in msg and f": {field}: " in msg and words in msg and "Fix:" in msg, msg


def test_every_output_the_workflow_plans_passes_the_target_check(wd):
    """No false alarm: each file a full plan names (demo sweep, spans, run level) is a target the check lets through."""
    import re

    from causal_kl.config import gold_points, load_config, routes_at, run_spans

    out = snakemake(wd, "-n", "--forceall")
    outputs = set(re.findall(r"output: ([^\n]+)", out))
    paths = [p.strip() for line in outputs for p in line.split(",") if p.strip().startswith("results/")]
    demo = load_config(wd / "config/config.yaml")
    assert any("/span16/" in p for p in paths) and any(p.endswith("tables/layers.csv") for p in paths)
    # a route is patched (and analysed) at its own spans only: the demo's SAE suite at span 1, its k = 16 SAE at all
    assert any("L3/span16/patch/sae_k16" in p for p in paths) and any("L3/span1/patch/sae_k04" in p for p in paths)
    others = ("sae_k04", "sae_k64", "pca", "text_channel")
    assert not any(f"/span{k}/" in p and f"/{r}" in p for p in paths for k in (4, 16) for r in others)
    assert any(p.endswith("report/L1/sae_k04.html") for p in paths) and any(p.endswith("L3/tables/frontier.csv") for p in paths)
    # and the demo's points inside block 3: its three SAEs there, the transcoder's input golds (a gold-only point)
    assert any("L3.mlp_out/span1/patch/skip_transcoder" in p for p in paths) and any("L3.attn_z/tables/routes.csv" in p for p in paths)
    assert any(p.endswith("L3.mlp_in/gold.parquet") for p in paths) and not any("L3.mlp_in/span" in p for p in paths)
    assert not any("L3.mlp_out/span4" in p for p in paths)  # a point inside a block is patched at its routes' spans only
    checks.check_targets(paths, "results/demo", {p.name: routes_at(demo, p) for p in gold_points(demo)}, run_spans(demo))
