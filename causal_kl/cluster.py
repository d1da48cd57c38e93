"""How model jobs share a cluster's allocations: Snakemake groups, one model load per allocation.

On a cluster every job is its own submission, and a job that loads the model pays the load (a 27B checkpoint from
the cluster's file system) and a queue round trip for seconds of GPU work. Snakemake's own groups pack jobs into one
submission: the allocation's Snakemake runs them one after another, and the model server it owns (started at parse
time, ``causal_kl.client.prestart_servers``) loads the model once for all of them. Locally groups are inactive
(Snakemake ignores them), so a local run is what it was.

The packing follows the DAG:

- ``extract``: ``gold`` and ``span_gold``, blocks of ``cluster.shards_per_allocation.extract`` shards (every layer and
  span of a shard together: the server's extraction cache serves a shard's layers from one forward);
- ``patch``: ``patch_floors`` and ``patch_route``, blocks of ``cluster.shards_per_allocation.patch`` shards (every
  layer, span and route of a shard together: the server's clean-pass cache serves a shard's routes from the floors'
  passes). Patching needs every shard's golds (the conditions), so extraction and patching are separate groups;
- ``routes``: a layer's model-backed reconstructions and SAELens-comparable scores (``recon_text_channel``,
  ``recon_sae``, ``recon_span``, ``whole_context``), one allocation per layer;
- ``train``: the golds of route-training rows (``train_gold``), one allocation.

NLA rules (their own checkpoints, not the run's model) stay one job per submission. A job in a block that must rerun
(a deleted shard, a new route) runs alone or with the other jobs of its block that must rerun: reruns stay per shard.

Group ids are ``<group>-<block>`` (``patch-0`` holds shards 0..K-1). Snakemake would split a group into its connected
components (the jobs of a block do not depend on each other), so each id is registered with a component count that
keeps the block whole (``register``), just as ``--group-components ID=N`` would.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from causal_kl.errors import CausalKLError
from causal_kl.model_rules import GROUP_PACKING, LAYER, LM, MODEL_RULES, SHARDS
from causal_kl.shims import wrap_where_source_fits

GROUPED_RULES: dict[str, str] = {rule: entry.group for rule, entry in MODEL_RULES.items() if entry.group}
"""Rule -> the group its jobs join on a cluster (from ``causal_kl.model_rules.MODEL_RULES``)."""
RULE_MODELS: dict[str, str | None] = {rule: entry.loads for rule, entry in MODEL_RULES.items()}
"""What each model rule loads in the model server (None: no language model, e.g. an SAE alone)."""

WHOLE_BLOCK = 1_000_000_000
"""The component count registered for a block: every job of the block in one group job."""

DEFAULT_SHARDS = {"extract": 20, "patch": 10}
"""Shards per allocation when neither the run config nor the profile says (the schema's defaults too)."""


def shards_per_allocation(config: Mapping, source: str | Callable[[str], str]) -> dict[str, int]:
    """``cluster.shards_per_allocation`` as positive integers (a profile's ``config:`` gives them as strings).

    Raises one line naming the setting and the fix for anything but a whole number ≥ 1. ``source``: where the config
    was given (then the profile's ``config:`` is named beside it), or, given a setting's key, where that setting was
    given (``checks.setting_source``: ``--config``, the profile, the config file).
    """
    given = ((config.get("cluster") or {}).get("shards_per_allocation") or {})
    out = dict(DEFAULT_SHARDS)
    for group in DEFAULT_SHARDS:
        if group not in given:
            continue
        value = given[group]
        try:
            n = int(str(value).strip()) if not isinstance(value, bool) else None
        except ValueError:
            n = None
        if n is None or n < 1 or str(value).strip() not in (str(n), f"+{n}"):
            key = f"cluster.shards_per_allocation.{group}"
            where = source(key) if callable(source) else f"{source} (or the profile's config:)"
            raise CausalKLError(where, key,
                                f"{value!r} is not a number of shards", f"give a whole number ≥ 1 (default "
                                f"{DEFAULT_SHARDS[group]}: that many shards' {group} jobs share one allocation)")
        out[group] = n
    return out


def shard_group_id(group: str, shard: int | str, shards: Mapping[str, int]) -> str:
    """The group id of a shard's job in ``group`` (``patch-3``: the 4th block of ``shards[group]`` shards)."""
    return f"{group}-{int(shard) // shards[group]}"


def layer_group_id(group: str, layer: int | str) -> str:
    """The group id of a point's job in ``group`` (``recon_sae-L3``, ``recon_sae-L3.mlp_out``: ``layer`` is the point's
    name, the ``{layer}`` wildcard)."""
    return f"{group}-L{layer}"


def model_group_id(rule: str, wildcards, shards: Mapping[str, int]) -> str:
    """The group id of a job of model rule ``rule`` (its ``wildcards``): its block of shards (``shards``: shards per
    allocation of each group), its point, or the run, as its group is packed (``model_rules.GROUP_PACKING``)."""
    group = GROUPED_RULES[rule]
    if GROUP_PACKING[group] == SHARDS:
        return shard_group_id(group, wildcards.shard, shards)
    if GROUP_PACKING[group] == LAYER:
        return layer_group_id(group, wildcards.layer)
    return group


def register(group_components: dict, group_id: str) -> str:
    """Keep every job of ``group_id`` in one group job (what ``--group-components ID=N`` does); return the id."""
    group_components.setdefault(group_id, WHOLE_BLOCK)
    return group_id


def check_groups(overwrite_groups: Mapping[str, str], source: str = "--groups (or the profile's groups:)") -> None:
    """Refuse a grouping that would put jobs of two different models behind one model server.

    ``overwrite_groups`` is Snakemake's ``--groups RULE=GROUP`` (a profile's ``groups:``), applied over
    ``GROUPED_RULES``. A group may hold rules of one model only (rules that load none join any group).
    """
    groups = dict(GROUPED_RULES)
    groups.update(overwrite_groups)
    members: dict[str, list[str]] = {}
    for rule, group in groups.items():
        members.setdefault(str(group).split("{")[0].rstrip("-_"), []).append(rule)
    for group, rules in sorted(members.items()):
        models = sorted({RULE_MODELS[r] for r in rules if RULE_MODELS.get(r)})
        # an NLA rule loads one checkpoint per route: two jobs of it in one group already mean two models
        nla = [r for r in rules if RULE_MODELS.get(r, "") and RULE_MODELS[r] != LM]
        if len(models) > 1 or (nla and len(rules) > 1):
            raise CausalKLError(source, f"{', '.join(sorted(r for r in rules if r in overwrite_groups))}={group}",
                                f"group '{group}' would put jobs of {' and '.join(models)} ({', '.join(sorted(rules))}) "
                                "behind one model server", "group rules of one model only: remove these --groups "
                                "entries (the workflow's own groups keep each model apart)")


def runs_model_jobs(argv: list[str]) -> bool:
    """Does this Snakemake (a cluster allocation's own, given ``--allowed-rules`` by the submitting one) run model
    jobs? Without ``--allowed-rules`` it may run anything, so yes."""
    if "--allowed-rules" not in argv:
        return True
    rules = []
    for arg in argv[argv.index("--allowed-rules") + 1:]:
        if arg.startswith("-"):
            break
        rules += arg.split()
    return any(r in RULE_MODELS for r in rules)


_CHECK_LOOP = "for group in self._group.values():"
"""The loop of Snakemake's ``DAG._check_groups`` that ``check_each_group_once`` narrows (its only use of ``_group``)."""


def check_each_group_once(dag_class=None) -> bool:
    """Make Snakemake's group self-dependency check visit each group once instead of once per member.

    ``DAG._check_groups`` (Snakemake 9) loops over ``self._group.values()``: one entry per *job*, so a group of g jobs
    is checked g times, each check walking every member's ancestors in full. Its cost is then the sum over groups of
    g² ancestor walks: a 100k-site study's 600-job patch blocks take minutes to plan. Checking a group once gives the
    same verdict (the check of one group does not depend on which member led to it). This wraps the original method,
    handing it a job -> group map with one entry per group, and puts the full map back afterwards; Snakemake's own
    check still runs, unchanged. It is applied only where the installed method has the expected loop (and uses
    ``_group`` nowhere else), so a Snakemake that changes it is left alone. Returns whether the wrapper is in place.
    """
    if dag_class is None:
        import snakemake.api  # noqa: F401  (snakemake.dag, imported first, is a circular import)
        from snakemake.dag import DAG as dag_class

    def wrap(original):
        def check_groups_once(self):
            every = self._group
            once: dict[int, tuple] = {}
            for job, group in every.items():
                once.setdefault(id(group), (job, group))
            self._group = dict(once.values())
            try:
                return original(self)
            finally:
                self._group = every

        return check_groups_once

    return wrap_where_source_fits(dag_class, "_check_groups", wrap, "checks_each_group_once",
                                  lambda source: source.count("self._group") == 1 and _CHECK_LOOP in source)


_STATUS_QUERY_USE = "await query_job_status("
"""How the SLURM executor plugin's ``check_active_jobs`` calls the query ``see_cancelled_slurm_jobs`` wraps."""


def base_slurm_state(state: str) -> str:
    """A SLURM job state without its annotation: ``sacct`` writes a cancelled job as ``CANCELLED by <uid>``."""
    return state.split(maxsplit=1)[0] if state.strip() else state


def see_cancelled_slurm_jobs(plugin=None) -> bool:
    """Make the SLURM executor plugin see a cancelled allocation as failed instead of running forever.

    The plugin (snakemake-executor-plugin-slurm 2.8) reads each job's state from ``sacct -X --parsable2
    --format=JobIdRaw,State`` and fails a job whose state is one of its own fail states (``"CANCELLED"``, ...), by
    equality. But ``sacct`` writes a job cancelled by ``scancel`` (a user, an admin) as
    ``CANCELLED by <uid>``: no fail state matches, the job counts as still running, and Snakemake waits for it for
    ever, its rerun never submitted. This wraps the plugin's ``query_job_status`` so that every state reaches the
    plugin as its first word (``CANCELLED``); the plugin's own handling then runs unchanged (the job fails, the
    profile's ``retries`` resubmit it, ``--keep-going`` goes on with the rest). It is applied only where the installed
    plugin calls that function from ``check_active_jobs``; without the plugin (a local install) nothing changes.
    Returns whether the wrapper is in place.

    Why a wrapper and not the plugin's own configuration (read in 2.8's source): its one status setting,
    ``status_command`` (``--slurm-status-command``, ``slurm-status-command:`` in a profile), chooses between two fixed
    queries, ``sacct`` (above) and ``squeue --format=%i|%T --states=all``, with no command or state mapping of one's
    own. ``squeue`` does print a cancelled job as ``CANCELLED``, but only for ``MinJobAge`` seconds after it ends (a job
    it no longer lists counts as still queued: the same wait for ever), the plugin goes back to ``sacct`` by itself
    where ``MinJobAge`` is under three status intervals, and with ``squeue`` it cannot read a failed job's reasons. No
    setting makes the plugin see a ``scancel``'d job under ``sacct``, so the wrapper stays (``tests/test_cluster.py``
    fails, saying to drop it, once the plugin as installed fails such a job by itself).
    """
    if plugin is None:
        try:
            import snakemake_executor_plugin_slurm as plugin
        except ImportError:
            return False
    caller = getattr(getattr(plugin, "Executor", None), "check_active_jobs", None)
    if caller is None:
        return False

    def wrap(original):
        async def query_base_states(*args, **kwargs):
            states, seconds = await original(*args, **kwargs)
            if states:
                states = {job: base_slurm_state(state) for job, state in states.items()}
            return states, seconds

        return query_base_states

    return wrap_where_source_fits(plugin, "query_job_status", wrap, "sees_cancelled_jobs",
                                  lambda source: _STATUS_QUERY_USE in source, source_of=caller, coroutine=True)


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def apply_cluster_shims(dag_class=None, plugin=None) -> list[str]:
    """Put both wrappers in place for a cluster run; one warning line for each that could not be (the installed
    source is not the one they were written against), naming the version seen and what the run loses without it.
    The Snakefile logs them, so a user on another Snakemake or plugin version learns it from the run's log."""
    warnings = []
    if not check_each_group_once(dag_class):
        warnings.append(
            f"causal-kl: Snakemake {_version('snakemake')}'s DAG._check_groups is not the one check_each_group_once "
            "was written for (tested: 9.27): the group check runs once per member, so planning a 100k-site study "
            "under SLURM may take minutes instead of seconds (results are unaffected)")
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
        have_plugin = True
    except ImportError:
        have_plugin = plugin is not None
    if (have_plugin or plugin is not None) and not see_cancelled_slurm_jobs(plugin):
        warnings.append(
            f"causal-kl: snakemake-executor-plugin-slurm {_version('snakemake-executor-plugin-slurm')} does not call "
            "query_job_status from check_active_jobs as 2.8 does, so see_cancelled_slurm_jobs is not applied: an "
            "allocation cancelled with scancel may be waited on for ever (cancel the snakemake run too, then rerun)")
    return warnings
