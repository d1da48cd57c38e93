"""Workflow level: what a finished run plans next, under the demo config with a user's own SAE beside the demo's.

One small run of the real Snakefile under a config with a ``demo`` block (so the demo's corpus and model are
Snakemake inputs made by its own rules; here the tests' tiny Gemma-3 and fixture corpus stand in for them, marked
made with ``--touch``) and an ``sae`` route pointing at a folder the workflow does not make, written by SAELens
itself (``SAE.save_model``). Then, dry runs only:

- from other entry points (a single target, ``--configfile config/config.yaml``, the config file written in
  another key order, a copy of the whole folder) the finished run plans nothing: every dict-valued param is
  canonical (Snakemake compares each param's ``repr``), and every param Snakemake recorded is;
- replacing the SAE's weights at the same path plans exactly the jobs that read it (its reconstruction at each
  span, its whole-context scores), though the config has a ``demo`` block: every file the workflow does not make
  is fingerprinted, in every config.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from workflow_helpers import assert_params_canonical, copy_workflow, dry_run_blocks, run_snakemake, tiny_config

pytestmark = pytest.mark.slow

LAYER = 2
SPANS = [1, 4]
TARGETS = [f"results/demo/L{LAYER}/recon/mine.parquet", f"results/demo/L{LAYER}/whole_context/mine.json",
           f"results/demo/L{LAYER}/span4/recon/mine.parquet", f"results/demo/L{LAYER}/span4/patch/floors.parquet"]
"""What the run builds: the user's SAE read three ways (per site, per span position, whole contexts), and a
span's patch jobs (the model and the conditions, none reading the SAE)."""
READERS = {("recon_sae", "mine"), ("recon_span", "mine"), ("whole_context", "mine")}


def write_sae(path: Path, seed: int) -> Path:
    """A standard SAE of the tiny model's width, trained (here: initialised) at block LAYER, saved by SAELens."""
    import torch
    from sae_lens import StandardSAE, StandardSAEConfig

    torch.manual_seed(seed)
    cfg = StandardSAEConfig(d_in=64, d_sae=128, dtype="float32", device="cpu")
    cfg.metadata.hook_name = f"blocks.{LAYER}.hook_resid_post"
    sae = StandardSAE(cfg)
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.1)  # SAELens starts b_dec at zero; any change of the weights is what matters
    path.mkdir(parents=True, exist_ok=True)
    sae.save_model(path)
    return path


def demo_config(corpus_path: Path, model_path: Path) -> dict:
    config = tiny_config(corpus_path, model_path)
    # the order a user might write it in (and the demo's own train block, in config/config.yaml's order)
    config.update(run="demo", demo={"seed": 0, "train": {"steps": 5, "batch_size": 2, "seq_len": 64, "lr": 0.006,
                                                            "warmup_steps": 1}},
                  corpus=dict(config["corpus"], path="resources/demo/corpus.parquet"),
                  model={"path": "resources/demo/model", "layer": LAYER}, patch={"spans": SPANS},
                  whole_context={"n_ctx": 32, "n_contexts": 4, "batch_size": 2},
                  routes={"mine": {"kind": "sae", "path": "my_saes/L{layer}"}})
    return config


@pytest.fixture(scope="module")
def finished(tmp_path_factory, root, gemma3_dir, corpus_path):
    """The run, finished for TARGETS; the demo's assets are the fixtures, marked made by the demo's rules."""
    wd = copy_workflow(tmp_path_factory.mktemp("reruns") / "run", root)
    (wd / "config/config.yaml").write_text(yaml.safe_dump(demo_config(corpus_path, gemma3_dir), sort_keys=False))
    demo = wd / "resources/demo"
    demo.mkdir(parents=True)
    shutil.copy(corpus_path, demo / "corpus.parquet")
    shutil.copytree(gemma3_dir, demo / "model")
    shutil.copytree(gemma3_dir, demo / "tokenizer", ignore=shutil.ignore_patterns("*.safetensors", "config.json",
                                                                                    "generation_config.json"))
    (demo / "training.json").write_text("{}")
    write_sae(wd / f"my_saes/L{LAYER}", seed=0)
    run_snakemake(wd, "--touch", "--forceall", "resources/demo/model", "resources/demo/training.json")
    run_snakemake(wd, *TARGETS)
    return wd


def planned(out: str) -> dict[tuple[str, str | None], str]:
    """(rule, route) -> reason of every job a dry run plans (members of group jobs too)."""
    jobs = {}
    for rule, route, block in dry_run_blocks(out):
        reason = re.search(r"reason: ([^\n]*)", block)
        jobs[(rule, route)] = reason.group(1) if reason else ""
    return jobs


def assert_nothing_planned(wd: Path, *args: str) -> None:
    out = run_snakemake(wd, "-n", *args)
    assert "Nothing to be done" in out and not planned(out), out[-3000:]


def test_a_finished_run_plans_nothing_from_other_entry_points(finished, tmp_path):
    assert_nothing_planned(finished, *TARGETS)
    assert_nothing_planned(finished, TARGETS[0])  # a single target
    assert_nothing_planned(finished, *TARGETS, "--configfile", "config/config.yaml")
    # the same config written in another key order (sorted, as yaml.safe_dump and `causal-kl validate` write it):
    # before the params were canonical, demo_model's `train` dict alone read as changed and retrained the model
    config = finished / "config/config.yaml"
    as_written = config.read_text()
    config.write_text(yaml.safe_dump(yaml.safe_load(as_written), sort_keys=True))
    assert config.read_text() != as_written
    try:
        assert_nothing_planned(finished, *TARGETS)
        assert_nothing_planned(finished, *TARGETS, "--configfile", "config/config.yaml")
    finally:
        config.write_text(as_written)
    # a copy of the whole folder (dates kept, as cp -a and shutil.copytree do), run where it now lies
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy, symlinks=True)
    assert_nothing_planned(copy, *TARGETS)


def test_every_param_snakemake_recorded_is_canonical(finished):
    """What Snakemake compares, read back from its records: each param the repr of a canonical value."""
    params = assert_params_canonical(finished)
    assert {"demo_model", "sites", "gold", "recon_sae", "recon_span", "whole_context", "patch_floors"} <= set(params)
    assert sum(text.startswith("{") for texts in params.values() for text in texts) >= 10


def test_replacing_a_users_sae_under_the_demo_config_plans_exactly_its_readers(finished, tmp_path):
    wd = tmp_path / "run"
    shutil.copytree(finished, wd, symlinks=True)
    write_sae(wd / f"my_saes/L{LAYER}", seed=1)  # new weights, same path, same cfg.json
    jobs = planned(run_snakemake(wd, "-n", *TARGETS))
    assert set(jobs) == READERS, jobs
    assert all(reason.startswith("Params have changed") for reason in jobs.values()), jobs
