"""Workflow level (issue #31, item 1): after a failed job, the same command redoes what is missing or bad.

One small run of the real Snakefile is finished once (the report of a PCA route on the tests' tiny Gemma-3); every
case works on a copy of it (``shutil.copytree``, dates kept), breaks one file and runs the same command again:

- the two reproductions of the issue: a patch shard replaced by a parquet of other columns, and a gold shard
  truncated. Before, the aggregate failed, Snakemake deleted its output, and from then on every target above it said
  "Nothing to be done" while the bad shard stayed. Now the failing job names the file in one line and removes it (the
  pipeline wrote it), and the same command plans it again; the patch case is rerun to the end: the shard comes back
  equal to the one the run first wrote, and then nothing is left to do;
- a sweep over the run's other files, one per contract and one way of breaking it each (truncated, columns of
  another table, vectors one narrower, NaN vectors): the next run of the same command fails in one line naming the
  file, and the dry run after it never says "Nothing to be done" while the file is missing or bad.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workflow_helpers import copy_workflow, dry_run_blocks, run_snakemake, tiny_config, write_config

pytestmark = pytest.mark.slow

R = "results/t"
TARGET = f"{R}/report.html"
"""The command of every case: the report, as a user builds it."""


RUNTIME = {}
"""The model-server registry of this module's runs (``CAUSAL_KL_RUNTIME_DIR``, set by ``finished``): other runs on the
box never share or stop their servers."""


@pytest.fixture(scope="module")
def finished(tmp_path_factory, root, gemma3_dir, corpus_path):
    base = tmp_path_factory.mktemp("repair")
    RUNTIME["CAUSAL_KL_RUNTIME_DIR"] = str(base / "runtime")
    wd = copy_workflow(base / "run", root)
    config = tiny_config(corpus_path, gemma3_dir, routes={"p": {"kind": "pca", "train_rows": [4, 8], "k": 2}},
                         patch={"method": "naive"}, whole_context={"enabled": False}, analysis={"bootstrap": 20})
    write_config(wd, config)
    run_snakemake(wd, TARGET, env=RUNTIME)
    return wd


def copy_of(finished: Path, tmp_path: Path) -> Path:
    wd = tmp_path / "run"
    shutil.copytree(finished, wd, symlinks=True)
    return wd


def snakemake(wd: Path, *args: str) -> subprocess.CompletedProcess:
    """``snakemake --cores 1 ARGS`` as a user runs it (offline, one thread a job), success or not."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", **RUNTIME)
    return subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", *args], cwd=wd, env=env,
                          capture_output=True, text=True, timeout=600)


def error_lines(res: subprocess.CompletedProcess) -> set[str]:
    """The distinct causal-kl lines a failed run printed (the job's one line, as run_rule writes it)."""
    return {line for line in (res.stdout + res.stderr).splitlines() if line.startswith("causal-kl: ")}


def planned_outputs(wd: Path, *targets: str) -> tuple[str, list[tuple[str, str]]]:
    """A dry run's text and (rule, output line) of each job it plans."""
    res = snakemake(wd, "-n", *targets)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    jobs = []
    for rule, _, block in dry_run_blocks(out):
        line = next((ln.strip() for ln in block.splitlines() if ln.strip().startswith("output:")), "")
        jobs.append((rule, line))
    return out, jobs


def fails_in_one_line_and_replans(wd: Path, rel: str) -> str:
    """Run the same command on a run whose ``rel`` is bad: it fails in one line naming ``rel`` and removes it, and the
    dry run after it plans the job that writes ``rel`` again. Returns that line."""
    res = snakemake(wd, TARGET)
    assert res.returncode != 0, res.stdout[-2000:]
    lines = error_lines(res)
    assert len(lines) == 1, (lines, res.stderr[-3000:])
    (line,) = lines
    assert line.startswith(f"causal-kl: {rel}: ") and "rerun the same snakemake command to remake it" in line, line
    assert "Traceback" not in res.stderr
    assert not (wd / rel).exists()
    # the failed job's own log says so too, also when a model or analysis server wrote the rest of that log
    said = [p for p in (wd / "logs").rglob("*.log")
            if re.search(rf"ERROR causal_kl: removed \S*{re.escape(rel)}; rerun the same command", p.read_text())]
    assert len(said) == 1, [str(p) for p in (wd / "logs").rglob("*.log") if "removed" in p.read_text()]
    out, jobs = planned_outputs(wd, TARGET)
    assert "Nothing to be done" not in out
    # the job that writes it (for a shard of the sites checkpoint's folder: the checkpoint, its record removed too)
    assert any(rel in output or f"{Path(rel).parent}," in output for _, output in jobs), jobs
    assert any(output.endswith(TARGET) for _, output in jobs)  # and the report is built again from it
    return line


def test_a_patch_shard_of_other_columns_is_remade_by_the_same_command(finished, tmp_path):
    """Issue #31's first case, to the end."""
    wd = copy_of(finished, tmp_path)
    rel = f"{R}/L2/span1/patch/p/shard_000.parquet"
    written = pq.read_table(wd / rel)
    pq.write_table(pa.table({"a": [1, 2, 3]}), wd / rel)
    line = fails_in_one_line_and_replans(wd, rel)
    assert "site_id: column missing from patch table" in line
    # the aggregate's output, deleted by Snakemake when its job failed, is planned from the targets that read it
    out, jobs = planned_outputs(wd, f"{R}/L2/analysis/p/per_site.parquet")
    assert {rule for rule, _ in jobs} >= {"patch_route", "patch_route_aggregate", "per_site"}, jobs
    run_snakemake(wd, TARGET, env=RUNTIME)
    remade = pq.read_table(wd / rel)
    assert remade.equals(written), "the remade shard differs from the one the run first wrote"
    assert pq.read_table(wd / f"{R}/L2/span1/patch/p.parquet").num_rows == (
        remade.num_rows + pq.read_table(wd / f"{R}/L2/span1/patch/p/shard_001.parquet").num_rows)
    out, jobs = planned_outputs(wd, TARGET)
    assert "Nothing to be done" in out and not jobs, jobs


def test_a_truncated_gold_shard_is_planned_again_by_the_same_command(finished, tmp_path):
    """Issue #31's second case: no shard for the user to delete by hand, no plain `snakemake` needed."""
    wd = copy_of(finished, tmp_path)
    rel = f"{R}/L2/gold/shard_000.parquet"
    with open(wd / rel, "r+b") as fh:
        fh.truncate((wd / rel).stat().st_size // 2)
    line = fails_in_one_line_and_replans(wd, rel)
    assert "not a readable parquet file" in line
    _, jobs = planned_outputs(wd, TARGET)
    rules = [rule for rule, _ in jobs]
    assert rules.count("gold") == 1 and "gold_aggregate" in rules  # the one shard, then what was built on it


# ----------------------------------------------------------------------------- the sweep
def truncate(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 2)


def other_columns(path: Path) -> None:
    pq.write_table(pa.table({"a": [1, 2, 3]}), path)


def _with_vectors(path: Path, change) -> None:
    """Rewrite ``path`` with its vector column (the one fixed-size list) changed by ``change`` ([n, d] -> [n, d'])."""
    table = pq.read_table(path)
    (i,) = [i for i, f in enumerate(table.schema) if pa.types.is_fixed_size_list(f.type)]
    column = table.column(i).combine_chunks()
    vectors = change(np.asarray(column.values, dtype=np.float32).reshape(len(column), -1).copy())
    array = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1])
    pq.write_table(table.set_column(i, table.schema.field(i).name, array), path)


def narrower(path: Path) -> None:
    _with_vectors(path, lambda v: v[:, :-1])


def nan_vectors(path: Path) -> None:
    def nan_first(v):
        v[0] = np.nan
        return v

    _with_vectors(path, nan_first)


SWEEP = [  # (patch and gold shards: the two reproductions above)
    ("sites/shard_000.parquet", other_columns),  # sites (a shard of the checkpoint's folder)
    ("docs.parquet", truncate),  # docs
    ("L2/gold.parquet", nan_vectors),  # gold
    ("L2/train_gold/rows_4_8.parquet", narrower),  # gold (a route's training rows)
    ("L2/recon/p.parquet", narrower),  # recon
    ("L2/conditions/choices.parquet", other_columns),  # condition choices
    ("L2/conditions/mean.parquet", nan_vectors),  # eval mean
    ("L2/conditions/noise.parquet", narrower),  # noise directions
    ("L2/geometry/p.parquet", other_columns),  # geometry
    ("L2/analysis/error_norms.parquet", truncate),  # error norms
    ("L2/analysis/p/per_site.parquet", other_columns),  # per site
]


@pytest.mark.parametrize("rel, corrupt", SWEEP, ids=[f"{rel}-{c.__name__}" for rel, c in SWEEP])
def test_a_bad_file_of_the_run_fails_in_one_line_and_is_planned_again(finished, tmp_path, rel, corrupt):
    wd = copy_of(finished, tmp_path)
    corrupt(wd / R / rel)
    fails_in_one_line_and_replans(wd, f"{R}/{rel}")
