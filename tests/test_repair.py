"""causal_kl.repair without Snakemake runs: which bad inputs a failing job removes, and that the DAG wrapper applies.

The workflow-level behaviour (a failed job, then the same command) is in tests/test_workflow_repair.py.
"""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from causal_kl.contracts import PATCH, SITES
from causal_kl.errors import CausalKLError
from causal_kl.io import read_parquet
from causal_kl.repair import REMADE_FIX, made_by_run, rebuild_missing_inputs, remove_bad_input


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A workflow folder (jobs run there) with a bad shard of run ``t`` and a user's file beside it."""
    monkeypatch.chdir(tmp_path)
    shard = tmp_path / "results/t/L2/span1/patch/p/shard_000.parquet"
    shard.parent.mkdir(parents=True)
    pq.write_table(pa.table({"a": [1, 2, 3]}), shard)
    other_run = tmp_path / "results/u/L2/gold.parquet"
    other_run.parent.mkdir(parents=True)
    pq.write_table(pa.table({"a": [1]}), other_run)
    user = tmp_path / "mine/vectors.parquet"
    user.parent.mkdir()
    pq.write_table(pa.table({"a": [1]}), user)
    return tmp_path


def contract_error(path):
    """The error the pipeline's own reader raises on the file (not one made up here)."""
    with pytest.raises(CausalKLError) as info:
        read_parquet(path, PATCH)
    return info.value


def test_a_bad_input_this_run_wrote_is_removed_and_the_fix_says_rerun(workdir):
    rel = "results/t/L2/span1/patch/p/shard_000.parquet"
    err = contract_error(rel)
    reported = remove_bad_input(err, [rel, "results/t/sites.parquet"], "t")
    assert not os.path.exists(rel)
    assert reported.fix == REMADE_FIX and "rerun the same snakemake command" in str(reported)
    assert (reported.file, reported.field, reported.problem) == (err.file, err.field, err.problem)
    assert "\n" not in str(reported) and str(reported).startswith(rel + ": site_id: column missing")


def test_a_bad_shard_of_the_sites_folder_takes_the_checkpoints_record_with_it(workdir):
    """The folder is the sites checkpoint's output (its shards have no rule of their own): without its record
    (sites.json) the checkpoint reruns and writes them again."""
    shard, record = workdir / "results/t/sites/shard_000.parquet", workdir / "results/t/sites.json"
    shard.parent.mkdir(parents=True)
    pq.write_table(pa.table({"a": [1]}), shard)
    record.write_text("{}")
    beside = workdir / "results/t/sites/shard_001.parquet"
    pq.write_table(pa.table({"a": [1]}), beside)
    with pytest.raises(CausalKLError) as info:
        read_parquet(shard, SITES)
    assert remove_bad_input(info.value, [str(shard)], "t").fix == REMADE_FIX
    assert not shard.exists() and not record.exists() and beside.exists()


def test_an_absolute_path_names_the_same_input(workdir):
    rel = "results/t/L2/span1/patch/p/shard_000.parquet"
    reported = remove_bad_input(contract_error(os.path.abspath(rel)), [rel], "t")
    assert reported.fix == REMADE_FIX and not os.path.exists(rel)


@pytest.mark.parametrize("path, inputs, run", [
    ("mine/vectors.parquet", ["mine/vectors.parquet"], "t"),  # a user's file: never removed
    ("results/u/L2/gold.parquet", ["results/u/L2/gold.parquet"], "t"),  # another run's results (a stored gold)
    ("results/t/L2/span1/patch/p/shard_000.parquet", ["results/t/sites.parquet"], "t"),  # not this job's input
    ("results/t/L2/span1/patch/p/shard_000.parquet", ["results/t/L2/span1/patch/p/shard_000.parquet"], None),
])
def test_other_files_are_left_and_the_error_comes_back_as_it_is(workdir, path, inputs, run):
    err = contract_error(path)
    assert remove_bad_input(err, inputs, run) is err
    assert os.path.exists(path)


def test_an_error_of_no_file_comes_back_as_it_is(workdir):
    err = CausalKLError(None, "model.path", "not found", "fix the config")
    assert remove_bad_input(err, ["results/t/sites.parquet"], "t") is err


def test_made_by_run_is_the_runs_results_folder_only(workdir):
    assert made_by_run("results/t/L2/gold.parquet", "t")
    assert made_by_run(workdir / "results/t/sites.parquet", "t")
    assert not made_by_run("results/t2/sites.parquet", "t") and not made_by_run("results/t", "t")
    assert not made_by_run("resources/demo/model", "t")


def test_the_wrapper_applies_to_the_installed_snakemake_once():
    """If Snakemake's update_needrun changes shape, this fails (and the run's parse prints a warning)."""
    import snakemake.api  # noqa: F401
    from snakemake.dag import DAG

    assert rebuild_missing_inputs(lambda path: True)
    wrapped = DAG.update_needrun
    assert rebuild_missing_inputs(lambda path: True) and DAG.update_needrun is wrapped


def test_the_wrapper_leaves_an_unknown_dag_alone():
    class OtherDAG:
        async def update_needrun(self):
            return "its own"

    original = OtherDAG.update_needrun
    assert not rebuild_missing_inputs(lambda path: True, OtherDAG) and OtherDAG.update_needrun is original
