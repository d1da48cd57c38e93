"""A failed job leaves a state the same command repairs (issue #31, item 1).

Two holes let a rerun of the same command say "Nothing to be done" over a result whose files are gone or bad:

1. Snakemake rebuilds a missing file only when a job that reads it must run anyway: a file between two others
   (an aggregate such as ``span1/patch/{route}.parquet``, deleted by Snakemake when its job failed) is treated like a
   ``temp()`` file once everything after it exists, so every target above it reads as up to date.
   ``rebuild_missing_inputs`` makes any job of the plan that other jobs of the plan depend on, and whose output is
   missing, run (as if it were a target), so that it and everything built on it are redone.
2. A job that finds a file the pipeline itself wrote unreadable or off its contract (a truncated shard, a parquet of
   the wrong columns) cannot fix it, and a plain rerun keeps it (its date looks current). ``remove_bad_input`` takes
   such a file away when the job that read it fails, and its one line says so: rerunning the same command then remakes
   the file (hole 1 sees it missing) and what was built from it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable

from causal_kl.errors import CausalKLError
from causal_kl.shims import wrap_where_source_fits

REMADE_FIX = "it was written by this pipeline and is now removed: rerun the same snakemake command to remake it"
"""The fix of a job's error once the bad file it read (one this run's rules write) has been removed."""


def made_by_run(path: str | Path, run: str) -> bool:
    """Whether ``path`` lies in ``results/{run}/``, where only the run's own rules write (relative to the workflow's
    folder, where jobs run)."""
    rel = os.path.normpath(os.path.relpath(os.path.abspath(path)))
    return rel.startswith(os.path.join("results", run) + os.sep)


FOLDER_RECORDS = {"sites": "sites.json"}
"""A checkpoint's folder of shards (``results/{run}/sites/``) -> the checkpoint's record of them beside it. A shard in
the folder has no rule of its own (the folder is the ``sites`` checkpoint's output): removing a bad one removes the
record too, so that the checkpoint is rerun (``rebuild_missing_inputs``) and writes its shards again."""


def remove_bad_input(error: CausalKLError, inputs: Iterable[str | Path], run: str | None) -> CausalKLError:
    """The error a job reports after ``error``: when it names one of the job's ``inputs`` that this run's rules wrote
    (``made_by_run``) and that is there, the file is removed (with its folder's record, ``FOLDER_RECORDS``) and the fix
    says to rerun the same command; any other error (the config, a user's file, an output) comes back as it is."""
    if not error.file or not run:
        return error
    bad = os.path.normpath(os.path.abspath(error.file))
    if bad not in {os.path.normpath(os.path.abspath(p)) for p in inputs} or not made_by_run(bad, run):
        return error
    if not os.path.isfile(bad):
        return error
    os.remove(bad)
    folder = os.path.dirname(bad)
    record = FOLDER_RECORDS.get(os.path.basename(folder))
    if record and os.path.dirname(folder) == os.path.abspath(os.path.join("results", run)):
        Path(os.path.dirname(folder), record).unlink(missing_ok=True)
    return CausalKLError(error.file, error.field, error.problem, REMADE_FIX)


def job_input_files(snakemake) -> list[str]:
    """Every input file of a Snakemake job (named or not, lists flattened)."""
    return [str(f) for f in snakemake.input]


_NEEDRUN_TARGET_CHECK = "elif job in self.targetjobs:"
"""The line of ``DAG.update_needrun`` (Snakemake 8-9) after which a target job's missing outputs, those the jobs
depending on it read, make it run: what the wrapper relies on."""


def rebuild_missing_inputs(rebuildable: Callable[[str], bool], dag_class=None) -> bool:
    """Make Snakemake redo a missing file that a job of the plan reads, and everything built on it.

    ``DAG.update_needrun`` (Snakemake 9) looks for missing outputs only in target jobs and in the jobs below one that
    must run; a job whose output is missing while every job reading it is up to date does not run (the ``temp()``
    semantics, here applied to files that are not temporary). This wraps it: before each pass, every job of the plan
    that other jobs of the plan depend on and whose output (one for which ``rebuildable(path)`` holds: the run's own
    results) is missing is handed to Snakemake as a target job, that output as a target file, for that pass.
    Snakemake's own code then gives it the reason "Missing output files" and reruns, as usual, every job that depends
    on it. Applied only where the installed method has the expected target-job check; returns whether the wrapper is
    in place.
    """
    if dag_class is None:
        import snakemake.api  # noqa: F401  (snakemake.dag, imported first, is a circular import)
        from snakemake.dag import DAG as dag_class

    def wrap(original):
        async def update_needrun(self, *args, **kwargs):
            added, missing = set(), set()
            for job in list(self.jobs):
                if job in self.targetjobs or self.finished(job) or not self.depending[job]:
                    continue
                gone = {f for f in job.output if rebuildable(str(f)) and not await f.exists()}
                if gone:
                    added.add(job)
                    missing |= gone - self.targetfiles
            self.targetjobs |= added
            self.targetfiles |= missing  # (an output no job reads, e.g. a checkpoint's record, counts too)
            try:
                return await original(self, *args, **kwargs)
            finally:
                self.targetjobs -= added
                self.targetfiles -= missing

        return update_needrun

    return wrap_where_source_fits(dag_class, "update_needrun", wrap, "rebuilds_missing_inputs",
                                  lambda source: _NEEDRUN_TARGET_CHECK in source, coroutine=True)
