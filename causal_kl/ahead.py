"""Work ahead: the model server computes the next planned shard job while Snakemake finishes the last one and starts
the next one's process (issue #32 item 3).

Between two model requests the model waits for Snakemake: it notes the finished job, schedules the next one and
starts its process (Python, Snakemake's script preamble, the client's imports, the connect): about 0.2 s a job on a
2-core box, ~1 s on the H200 box, 31 times in the production run. Snakemake 9 runs every script job, group members
too, as a process of its own and removes a job's outputs before it runs, so one job cannot stand for several shards
while a deleted shard still reruns alone. Each shard stays its own Snakemake job with its own file, log and rerun;
what changes is when the model computes it:

- **the plan** (``Planner``, from the Snakefile's ``onstart`` of a local run with the model server on; written again
  when a checkpoint finishes: the shards exist only once ``sites`` has run): the invocation's planned jobs of the
  per-shard rules of the run's model (``works_ahead``: gold, span_gold, patch_floors, patch_route), each with the
  exact request its job will send (``causal_kl.jobs.model_job_kwargs`` on the planned job, the code the job's
  process runs on its ``snakemake`` object), in Snakemake's priority order, in a file keyed by the invocation (its
  owner: ``causal_kl.procs.find_owner``); beside it, the jobs Snakemake has made ready since (``follow_finished_jobs``:
  after each finished job, whose outputs Snakemake has checked and touched, the planned jobs that wait for nothing
  more);
- **the server** (``WorkAhead``), when its queue is empty after a request, computes the first planned job that is
  ready and whose outputs are not there, with the outputs renamed to hidden staging files beside them
  (``staging_path``) and its log lines kept, at most ``MAX_STAGED`` unclaimed at a time;
- **the job's own request** then claims it (``WorkAhead.claim``): same function, same arguments (outputs, params,
  provenance), same thread count, and every input unchanged since the computation began (inode, size, mtime): the
  staged files are renamed onto the outputs and the kept lines go to the job's log after one line saying so.
  Anything else is computed as before, and the staged files are removed.

So the numbers are those of the job's own request (the same function on the same arguments in the same process),
a shard deleted after a run is planned alone and reruns alone, and a job Snakemake never runs costs at most
``MAX_STAGED`` shards of model time. ``model_server: {work_ahead: false}`` turns it off. Local runs only: in a
cluster allocation each job is its own submission's.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

PLANS = "plans"
"""Folder of the plan files in the runtime scope (beside ``servers``)."""

MAX_STAGED = 2
"""Computed-ahead jobs waiting for their request, at most: the model time a job Snakemake does not run can cost."""

WINDOW = 64
"""Planned jobs looked at past the first one not yet done (Snakemake runs the ready jobs of highest priority: the
next ones in the plan); the plan of a 100k-site study is never scanned whole per request."""

STAGING_PREFIX = ".ahead-"


def works_ahead(rule: str) -> bool:
    """Whether the server may compute ``rule``'s jobs ahead: the per-shard rules of the run's model (the rules of a
    shard-packed cluster group: many short jobs of the model the server has loaded)."""
    from causal_kl.model_rules import GROUP_PACKING, LM, MODEL_RULES, SHARDS

    spec = MODEL_RULES.get(rule)
    return spec is not None and spec.loads == LM and spec.group is not None and GROUP_PACKING[spec.group] == SHARDS


def work_ahead_on(config: Mapping) -> bool:
    """``model_server`` on and not ``{work_ahead: false}``."""
    block = config.get("model_server", True)
    if isinstance(block, dict):
        return bool(block.get("work_ahead", True))
    return bool(block)


def plan_path(owner_pid: int, owner_start: int) -> Path:
    """The plan file of the invocation whose Snakemake is (``owner_pid``, ``owner_start``)."""
    from causal_kl import gpu
    from causal_kl.protocol import step_scope

    d = gpu.runtime_dir() / step_scope() / PLANS
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    return d / f"{owner_pid}-{owner_start}.json"


def sweep_plans(folder: Path) -> None:
    """Remove the plans (and their marks) of invocations that are gone without removing them (a killed Snakemake)."""
    from causal_kl.procs import pid_alive

    for f in folder.glob("*-*.json"):
        try:
            pid, start = (int(x) for x in f.stem.split("-"))
        except ValueError:
            continue
        if not pid_alive(pid, start):
            remove_plan(f)


def sweep_staged(folders: Iterable[str]) -> None:
    """Remove the staging files a server killed without its cleanup (SIGKILL, a lost node) left in ``folders``."""
    from causal_kl.procs import pid_alive

    for folder in folders:
        for f in Path(folder).glob(f"{STAGING_PREFIX}*"):
            pid = f.name[len(STAGING_PREFIX):].split(".", 1)[0]
            if pid.isdigit() and not pid_alive(int(pid)):
                try:
                    f.unlink()
                except OSError:
                    pass


def remove_plan(path: Path) -> None:
    """Remove a plan, its ready list and the marks its servers left (``WorkAhead.take``)."""
    for f in [path, ready_path(path), *path.parent.glob(f"{path.stem}.*.taken")]:
        try:
            f.unlink()
        except OSError:
            pass


def job_target(rule_name: str, snakefile: str) -> str:
    """``"causal_kl.jobs.<rule file>:<rule>"``: the job function a model rule's script names (``tests/test_layout``
    holds every rule to this)."""
    return f"causal_kl.jobs.{Path(snakefile).stem}:{rule_name}"


def entry_key(func: str, kwargs: Mapping, threads: Any) -> str:
    """What a request must match to claim a computed-ahead job: its function, arguments and thread count."""
    from causal_kl.protocol import json_default

    text = json.dumps([func, kwargs, threads], sort_keys=True, default=json_default)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class _JobView:
    """A planned Snakemake job seen as a job's process sees its ``snakemake`` object (what ``model_job_kwargs`` reads)."""

    def __init__(self, job: Any, config: Mapping):
        self.input, self.output, self.params, self.wildcards = job.input, job.output, job.params, job.wildcards
        self.rule, self.config, self.threads = job.rule.name, config, job.threads


def plan_entry(job: Any, config: Mapping) -> dict | None:
    """The request a planned job will send, with its input and output files; None for a job that cannot be staged
    (an unnamed or non-file output)."""
    from causal_kl.jobs import model_job_kwargs
    from causal_kl.protocol import json_default

    outputs = dict(job.output.items())
    if not outputs or len(outputs) != len(job.output) or not all(isinstance(v, str) for v in outputs.values()):
        return None
    view = _JobView(job, config)
    kwargs = json.loads(json.dumps(model_job_kwargs(view), default=json_default))  # as the wire carries it
    func = job_target(job.rule.name, job.rule.snakefile)
    return {"func": func, "kwargs": kwargs, "threads": view.threads, "key": entry_key(func, kwargs, view.threads),
            "inputs": [str(f) for f in job.input], "outputs": {k: str(v) for k, v in outputs.items()},
            "log": str(job.log[0]) if job.log else None, "priority": job.priority}


def _deps_done(dag: Any, job: Any) -> bool:
    """Whether every job ``job`` depends on has finished in this invocation or was not planned (its files are there)."""
    return all(dag.finished(dep) or not dag.needrun(dep) for dep in dag.dependencies[job])


class Planner:
    """The Snakemake process's side: writes the invocation's plan, and after each finished job (``DAG.finish``, where
    Snakemake has checked and touched its outputs) appends the keys of the planned jobs it made ready to
    ``<plan>.ready`` (Snakemake's own readiness: a computation never starts on an input a running or planned job is
    still to write); a finished checkpoint (``sites``: the shards) writes the plan again."""

    def __init__(self, path: Path, config: Mapping, cwd: str):
        self.path, self.config, self.cwd = path, config, cwd
        self.keys: dict[int, str] = {}  # jobid -> plan key of the planned works-ahead jobs
        self.active = True

    def write(self, dag: Any) -> int:
        """Write the plan of ``dag``'s planned jobs (those of ``works_ahead`` rules), highest priority first (Snakemake's
        order of ready jobs; stable, so its own order among equals); returns the number of entries."""
        from causal_kl.protocol import write_json_atomic

        entries = []
        for job in dag.needrun_jobs():
            if works_ahead(job.rule.name):
                entry = plan_entry(job, self.config)
                if entry is not None:
                    entry["ready"] = _deps_done(dag, job)
                    self.keys[job.jobid] = entry["key"]
                    entries.append(entry)
        entries.sort(key=lambda e: -e["priority"])
        write_json_atomic(self.path, {"cwd": self.cwd, "entries": entries})
        sweep_staged({os.path.dirname(os.path.join(self.cwd, o)) for e in entries for o in e["outputs"].values()})
        return len(entries)

    def finished(self, dag: Any, job: Any) -> None:
        """After Snakemake finished ``job``: the planned jobs it made ready, or a new plan after a checkpoint."""
        if not self.active:
            return
        jobs = list(job) if job.is_group() else [job]
        if any(j.is_checkpoint for j in jobs):
            self.write(dag)  # the jobs the checkpoint decided (the shards), with what is ready now
            return
        ready = {self.keys[d.jobid] for j in jobs for d in dag.depending[j]
                 if d.jobid in self.keys and not dag.finished(d) and _deps_done(dag, d)}
        if ready:
            with open(ready_path(self.path), "a") as f:
                f.write("".join(k + "\n" for k in sorted(ready)))

    def finished_safely(self, dag: Any, job: Any) -> None:
        """``finished``, never failing the run it follows: a planner that fails says so once and stops (the model jobs
        then run as they would without work ahead)."""
        try:
            self.finished(dag, job)
        except Exception as e:  # noqa: BLE001 - work ahead is an optimisation; the run must not pay for its bug
            self.fail(e)

    def fail(self, e: BaseException) -> None:
        import sys

        print(f"causal-kl: warning: work ahead stopped ({type(e).__name__}: {e}); the model jobs run as they come",
              file=sys.stderr)
        self.remove()

    def remove(self) -> None:
        self.active = False
        remove_plan(self.path)


def ready_path(plan: Path) -> Path:
    """The keys of the planned jobs Snakemake made ready since the plan was written, a line each."""
    return plan.with_suffix(".ready")


def follow_finished_jobs(planner: Planner) -> bool:
    """Call ``planner.finished(dag, job)`` after Snakemake finishes each job (``DAG.finish``, where the installed
    Snakemake is the one this was written for: 9.x). Returns whether the hook is in place."""
    from snakemake.dag import DAG

    from causal_kl.shims import wrap_where_source_fits

    def wrap(original):
        async def finish(self, job, *args, **kwargs):
            out = await original(self, job, *args, **kwargs)
            for p in _PLANNERS:
                p.finished_safely(self, job)
            return out

        return finish

    _PLANNERS.append(planner)
    return wrap_where_source_fits(DAG, "finish", wrap, "causal_kl_follows_jobs",
                                  lambda source: "self._finished.update(jobs)" in source
                                  and "update_checkpoint_dependencies(jobs)" in source, coroutine=True)


_PLANNERS: list[Planner] = []
"""The planners ``follow_finished_jobs`` serves (one per invocation: the Snakemake process's own)."""


def staging_path(path: str) -> str:
    """The hidden file beside ``path`` that a computed-ahead output waits in (same folder: the claim is a rename)."""
    p = Path(path)
    return str(p.with_name(f"{STAGING_PREFIX}{os.getpid()}.{p.name}"))


def fingerprints(cwd: str, paths: Iterable[str]) -> list[list[int]] | None:
    """(inode, size, mtime_ns) of each path (a rewrite, atomic or in place, or a touch changes it); None when one is
    missing."""
    out = []
    for p in paths:
        try:
            st = os.stat(os.path.join(cwd, p))
        except OSError:
            return None
        out.append([st.st_ino, st.st_size, st.st_mtime_ns])
    return out


class WorkAhead:
    """The server's side: the invocation's plan, the jobs computed ahead and their claims. Called with the server's
    run lock held (one computation at a time)."""

    def __init__(self) -> None:
        self.staged: dict[str, dict] = {}  # key -> the computed job: entry, staged files, lines, reply, fingerprints
        self.tried: set[str] = set()  # keys computed ahead once (never twice, claimed or not)
        self._plan: tuple[str, int, dict] | None = None  # path, mtime_ns, plan
        self._first = 0  # every planned job before this one is done or was computed ahead
        self._ready: set[str] = set()  # keys Snakemake made ready since the plan was written
        self._ready_read: tuple[str | None, int] = (None, 0)  # the ready list read so far: path, offset

    def plan(self, path: Path) -> dict | None:
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            return None
        if self._plan is None or self._plan[:2] != (str(path), mtime):
            try:
                self._plan = (str(path), mtime, json.loads(path.read_text()))
            except (OSError, json.JSONDecodeError):
                return None
            self._first = 0
        return self._plan[2]

    def next_entry(self, path: Path) -> tuple[dict, str] | None:
        """The first planned job not yet computed that Snakemake has made ready (its inputs there) and whose outputs
        are not, and its workdir; taken for this server (``take``: with several GPUs each server computes other jobs ahead)."""
        for key, rec in list(self.staged.items()):  # made meanwhile by a request to another server: never claimed here
            if any(os.path.exists(os.path.join(rec["cwd"], o)) for o in rec["moves"]):
                discard(self.staged.pop(key))
        if len(self.staged) >= MAX_STAGED:
            return None
        plan = self.plan(path)
        if not plan:
            return None
        cwd = plan["cwd"]
        entries = plan.get("entries", [])
        self._read_ready(path)

        def done(entry: dict) -> bool:
            return entry["key"] in self.tried or any(os.path.exists(os.path.join(cwd, o)) for o in entry["outputs"].values())

        while self._first < len(entries) and done(entries[self._first]):
            self._first += 1
        for entry in entries[self._first:self._first + WINDOW]:
            if (not done(entry) and (entry.get("ready") or entry["key"] in self._ready)
                    and all(os.path.exists(os.path.join(cwd, i)) for i in entry["inputs"])):
                self.tried.add(entry["key"])
                if self.take(path, entry["key"]):
                    return entry, cwd
        return None

    def _read_ready(self, path: Path) -> None:
        f = ready_path(path)
        where, offset = self._ready_read
        if where != str(f):
            self._ready, offset = set(), 0
        try:
            with open(f, "rb") as fh:
                fh.seek(offset)
                data = fh.read()
        except OSError:
            data = b""
        complete = data[:data.rfind(b"\n") + 1]  # a line being appended is read next time
        self._ready.update(complete.decode().split())
        self._ready_read = (str(f), offset + len(complete))

    @staticmethod
    def take(path: Path, key: str) -> bool:
        """Mark a planned job as computed ahead by this server; False when another server of the invocation has."""
        try:
            os.close(os.open(path.parent / f"{path.stem}.{key}.taken", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            return True
        except FileExistsError:
            return False
        except OSError:
            return True  # no mark possible: compute it all the same

    def staged_kwargs(self, entry: dict) -> tuple[dict, dict[str, str]]:
        """The entry's arguments with each output renamed to its staging file, and ``{output: staging file}``."""
        kwargs = dict(entry["kwargs"])
        moves = {}
        for name, path in entry["outputs"].items():
            kwargs[name] = moves[path] = staging_path(path)
        return kwargs, moves

    def keep(self, entry: dict, cwd: str, moves: dict[str, str], lines: list[str], reply: dict,
             before: list | None, n: int, finished: float) -> None:
        """Keep a computed-ahead job for its request."""
        self.staged[entry["key"]] = {"entry": entry, "cwd": cwd, "moves": moves, "lines": lines, "reply": reply,
                                     "fingerprints": before, "n": n, "finished": finished}

    def claim(self, func: str, kwargs: Mapping, threads: Any, cwd: str | None) -> tuple[dict | None, str | None]:
        """The computed-ahead job a request is, with its staged files now renamed onto its outputs; or None and why
        not (None: nothing was computed for it). ``kwargs`` as the wire carried them (plain JSON, as the plan's)."""
        if not self.staged:  # most requests: nothing to hash
            return None, None
        rec = self.staged.pop(entry_key(func, kwargs, threads), None)
        if rec is None:
            return None, None
        entry = rec["entry"]
        why = None
        if cwd is not None and os.path.realpath(cwd) != os.path.realpath(rec["cwd"]):
            why = f"another workdir ({cwd})"
        elif rec["fingerprints"] is None or fingerprints(rec["cwd"], entry["inputs"]) != rec["fingerprints"]:
            why = "an input changed after it was computed"
        elif not all(os.path.isfile(os.path.join(rec["cwd"], s)) for s in rec["moves"].values()):
            why = "a staged file is gone"
        if why is not None:
            discard(rec)
            return None, why
        for out, staged in rec["moves"].items():
            dst = os.path.join(rec["cwd"], out)
            os.replace(os.path.join(rec["cwd"], staged), dst)
            os.utime(dst)  # written now, as far as Snakemake's dates go: the job that owns it is running
        return rec, None

    def discard_all(self) -> None:
        """Remove every staged file not claimed and forget what was tried (the server exits, or its invocation
        ended: the run's next invocation, adopting a kept server, plans afresh)."""
        while self.staged:
            discard(self.staged.popitem()[1])
        self.tried.clear()


def discard(rec: Mapping) -> None:
    """Remove a computed-ahead job's staged files."""
    for staged in rec["moves"].values():
        try:
            os.unlink(os.path.join(rec["cwd"], staged))
        except OSError:
            pass
