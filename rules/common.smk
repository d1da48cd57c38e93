# Shared by every rule: which config the run uses, checks before any job, run paths, shard ids,
# wildcard constraints, resources.
import functools
import json
import os
import re
import sys
from pathlib import Path
from types import SimpleNamespace

from snakemake.logging import logger
from snakemake.utils import validate

from causal_kl.cluster import (
    GROUPED_RULES,
    LAYER_GROUPS,
    SHARD_GROUPS,
    apply_cluster_shims,
    check_groups,
    runs_model_jobs,
    layer_group_id,
    register,
    shard_group_id,
    shards_per_allocation,
)
from causal_kl.checks import (
    check_run,
    check_shard_targets,
    check_targets,
    DEMO_SUBLAYER_KINDS,
    demo_sae_dir,
    demo_sae_ks,
    made_by_workflow,
    requested_groups,
    runs_jobs_here,
    setting_source,
    submits_to_cluster,
)
from causal_kl.config import (
    run_identity,
    DEFAULT_CONFIG,
    canonical,
    gold_points,
    layer_path,
    resolve_config,
    route_layers,
    route_hook_in,
    route_spans,
    set_route_hooks,
    route_points,
    routes_at,
    run_layers,
    run_points,
    run_spans,
    show_reference,
    validate_config,
)
from causal_kl.errors import CausalKLError
from causal_kl.hooks import RESID_POST, Point, parse_point
from causal_kl.io import content_fingerprint
from causal_kl.reference import REFERENCE_DIR
from causal_kl.repair import rebuild_missing_inputs
from causal_kl.routes.file import input_files as file_route_inputs
from causal_kl.sae_hub import is_named as is_named_sae, resolve_named as resolve_named_sae
from causal_kl.spans import check_spans_fit

try:
    # the run's config: the --configfile file(s) alone, else config/config.yaml (the demo); --config on top
    CONFIG_SOURCE = resolve_config(
        config,
        workflow.configfiles,
        workflow.config_settings.config,
        os.path.relpath(Path(workflow.basedir) / DEFAULT_CONFIG),
    )
    # one-line, file/key/fix errors before snakemake's own (longer) schema report, then every check the
    # config and the files it names allow (model config.json, layers, device, corpus, route files, SAEs)
    validate_config(config, source=CONFIG_SOURCE)
    # an sae route splices where its SAE's files say (a transcoder also reads another hook): written into the config
    set_route_hooks(config, check_run(config, CONFIG_SOURCE, local_exec=runs_jobs_here(sys.argv[1:]))["route_hooks"])
    check_targets(
        sys.argv[1:],
        f"results/{config['run']}",
        {p.name: routes_at(config, p) for p in gold_points(config)},  # a transcoder's input point has golds only
        run_spans(config),
    )
    check_shard_targets(sys.argv[1:], f"results/{config['run']}")  # a shard before the sites: what to build first
except CausalKLError as _err:
    sys.exit(f"causal-kl: {_err}")
validate(config, "../config/schema/config.schema.yaml")
# every dict of the config in sorted key order, so that no param reads as changed because a file, an entry point or
# a copy of the run gave the same keys in another order (Snakemake compares each param's repr)
_canonical_config = canonical(config)
config.clear()
config.update(_canonical_config)

if runs_jobs_here(sys.argv[1:]) and "gpu" not in workflow.global_resources:
    # one model job per GPU at a time (each job also takes one GPU slot, causal_kl.gpu), so that
    # `snakemake --cores N` on a GPU box is safe as written: model jobs run in priority order (shard
    # by shard: the model server's clean-pass cache then serves every route of a shard) while CPU
    # jobs fill the other cores. Pass --resources gpu=N to choose; cluster submission is not limited.
    from causal_kl.gpu import visible_gpus

    workflow.global_resources["gpu"] = max(1, len(visible_gpus()))

# ----------------------------------------------------------------------------- cluster groups
# On a cluster the model jobs of a block of shards share one allocation and one model load (causal_kl/cluster.py);
# locally the rules carry none (CLUSTER_GROUPS). `cluster.shards_per_allocation` (profiles/slurm) sizes the blocks.
try:
    SHARDS_PER_ALLOCATION = shards_per_allocation(config, lambda key: setting_source(sys.argv[1:], key, CONFIG_SOURCE))
    check_groups(requested_groups(sys.argv[1:]))
except CausalKLError as _err:
    sys.exit(f"causal-kl: {_err}")


def group_components():
    """Snakemake's --group-components, as a dict the workflow may add to (its group settings are set after parsing)."""
    settings = workflow.group_settings
    if not isinstance(settings.group_components, dict):
        settings.group_components = dict(settings.group_components)
    return settings.group_components


CLUSTER_GROUPS = workflow.remote_exec or submits_to_cluster(sys.argv[1:])
"""Whether the model rules are grouped: under a cluster executor, and in an allocation's own Snakemake. A local run
(or dry run) has none, as Snakemake would ignore them there, and so skips its group checks."""

if CLUSTER_GROUPS:
    # Snakemake checks each group once per member (DAG._check_groups): quadratic in a block's jobs; once is enough.
    # The SLURM plugin reads sacct's "CANCELLED by <uid>" as running: a scancel'd allocation would be waited on for ever.
    # Each wrapper that does not fit the installed source says so in the log, with what the run loses.
    for warning in apply_cluster_shims():
        logger.warning(warning)


def model_group(rule):
    """``group:`` of a model rule: its block of shards, its layer, or the run (causal_kl.cluster); None locally. Each id
    is registered so that Snakemake keeps the whole block in one group job (as ``--group-components ID=N`` would)."""
    if not CLUSTER_GROUPS:
        return None
    name = GROUPED_RULES[rule]
    if name in SHARD_GROUPS:
        return lambda w: register(group_components(), shard_group_id(name, w.shard, SHARDS_PER_ALLOCATION))
    if name in LAYER_GROUPS:
        return lambda w: register(group_components(), layer_group_id(name, w.layer))
    return lambda w: register(group_components(), name)


# model_server: {keep_s: N}: the servers this invocation starts or adopts outlive it N s, idle, for the run's next
# invocation (jobs and the onstart preload inherit it; causal_kl.server.keep_s is 0 inside a SLURM allocation)
from causal_kl.config import model_server_keep_s
from causal_kl.server import KEEP_ENV

os.environ[KEEP_ENV] = repr(model_server_keep_s(config))

if workflow.remote_exec and config.get("model_server", True) and runs_model_jobs(sys.argv[1:]):
    # this is a cluster allocation's own Snakemake (SLURM's batch step): start the model server(s) here, so that
    # they outlive each job step and every model job of the allocation shares one load (causal_kl.server)
    from causal_kl.server import prestart_servers

    prestart_servers(config["device"], f"logs/{config['run']}/model_server.log")


RUN = config["run"]
R = f"results/{RUN}"
LOGS = f"logs/{RUN}"

if not workflow.remote_exec and not rebuild_missing_inputs(lambda path: os.path.normpath(path).startswith(R + os.sep)):
    # without it, a failed aggregate's deleted output reads as an intermediate file: "Nothing to be done" above it
    print(
        "causal-kl: warning: this Snakemake's DAG.update_needrun is not the one causal_kl.repair wraps: a result file"
        " deleted between others is remade only by a plain `snakemake` or when named as a target",
        file=sys.stderr,
    )

MODEL = config["model"]
LAYERS = run_layers(config)
"""The run's layers (model.layer: one, or a sweep): its residual-stream points."""
POINTS = [p.name for p in run_points(config)]
"""The run's points, as the ``{layer}`` wildcard names them: ``"3"`` (block 3's output, resid_post) for every layer,
``"3.mlp_out"`` for a route at another hook of block 3. Each has its own golds, conditions and floors (in the hook's
space), shared by every route there; everything a residual route gets, a route gets at its point."""
GOLD_POINTS = [p.name for p in gold_points(config)]
"""The points whose golds are extracted: the run's points and the gold-only points routes read (a transcoder's input)."""
SPANS = run_spans(config)
"""The span lengths patched (1: the single-site splice)."""
EXTRA_SPANS = [k for k in SPANS if k > 1]
RL = f"{R}/L{{layer}}"
"""A point's outputs (``{layer}`` is a wildcard naming a point: ``L3``, ``L3.mlp_out``): golds, conditions, routes,
patches, analyses, gate."""
LL = f"{LOGS}/L{{layer}}"
RS = f"{RL}/span{{span}}"
"""A span's patch files (every span, 1 included) and, for spans > 1, its golds, choices and reconstructions."""
LS = f"{LL}/span{{span}}"
ROUTES = sorted(config.get("routes", {}))
SHOW_REF = show_reference(config)


def _alternatives(values):
    return "|".join(re.escape(str(v)) for v in values) or "(?!)"


wildcard_constraints:
    shard=r"\d\d\d+",  # 000..999, then 1000 and on: any number of shards plans (no braces: they would read as a wildcard)
    layer=_alternatives(GOLD_POINTS),  # a point: "3" (resid_post) or "3.mlp_out"
    span=_alternatives(SPANS),
    route=_alternatives(ROUTES),  # a target naming no configured route has no rule


EXTRA_SPAN = _alternatives(EXTRA_SPANS)
"""The wildcard constraint of rules that exist only for spans of more than one position."""


def shard_ids(wildcards=None):
    """The shards that hold sites: known once the ``sites`` checkpoint has sampled them (its sites.json).

    Then, before any shard job, the run's spans are checked against the sampled documents (one line if a span
    fits sites of fewer than two documents)."""
    with open(checkpoints.sites.get().output.stats) as fh:
        n_shards = json.load(fh)["n_shards"]
    spans_fit_sites()
    return [f"{i:03d}" for i in range(n_shards)]


@functools.cache
def spans_fit_sites():
    """Once per Snakemake process (an error is raised again on every call): spans.check_spans_fit on the run's sites."""
    check_spans_fit(EXTRA_SPANS, f"{R}/sites.parquet", f"{R}/docs.parquet", CONFIG_SOURCE)


def shard_files(pattern, **kw):
    """An input function: ``pattern`` for every shard of the run (the job's wildcards and ``kw`` filled in too)."""
    return lambda wildcards: expand(pattern, shard=shard_ids(), **kw, **dict(wildcards.items()))


def routes_of(point):
    """The routes at ``point`` (a point name, the ``{layer}`` wildcard), in name order."""
    return routes_at(config, point)


def spans_of(route):
    """The spans ``route`` is patched at (its own ``spans``, else every span of the run), ascending."""
    return route_spans(config, route)


def spans_at(layer):
    """The spans a point is patched at (its floors, and its routes' patches by their own ``spans``): every span of the
    run at the residual stream; inside a block only the spans its routes are patched at (floors at another span would
    serve no route there)."""
    if parse_point(layer).hook == RESID_POST:
        return SPANS
    return sorted({1, *(k for r in routes_of(layer) for k in spans_of(r))})


def extra_spans_of(route):
    """The spans of more than one position ``route`` is patched at."""
    return [k for k in spans_of(route) if k > 1]


def per_route(pattern):
    """An input function: ``pattern`` (with ``{route}``) for every route of the job's layer, in name order."""
    return lambda wildcards: expand(pattern, route=routes_of(wildcards.layer), **dict(wildcards.items()))


def route_config(wildcards):
    """The config entry of the job's route (at the job's layer: a pair the config does not have is an error)."""
    entry = config["routes"][wildcards.route]
    if hasattr(wildcards, "layer") and parse_point(wildcards.layer) not in route_points(config, wildcards.route):
        raise CausalKLError(
            CONFIG_SOURCE,
            f"routes.{wildcards.route}.layer",
            f"the route does not reconstruct point L{wildcards.layer}",
            "add the layer to the route (its hook decides the point)",
        )
    return entry


MADE = made_by_workflow(config)
"""Paths outside results/ that the run's own rules make (the demo's corpus, model, SAEs): Snakemake inputs."""


def model_input():
    """The model directory as a Snakemake input when the demo builds it, else nothing (hub id or external path)."""
    return [MODEL["path"]] if config.get("demo") else []


def model_path(wildcards, input):
    """A job's model: the model folder among its inputs when the workflow builds it (the demo), else the configured
    hub id or path (a param, never a hard-coded prefix of an input: the input is staged where the job runs)."""
    return str(input.model_dir[0]) if input.get("model_dir") else MODEL["path"]


def corpus_input():
    return [config["corpus"]["path"]] if config.get("demo") else []


def mem_mb(base):
    """A rule's ``mem_mb``: ``base`` MB on the first attempt, ``base * attempt`` on each retry.

    ``resources: mem_mb=mem_mb(4000)``; with ``--retries`` (set in profiles/) a job killed
    for memory is resubmitted asking for more (SLURM: ``sbatch --mem``).
    """
    return lambda wildcards, attempt: base * attempt


MODEL_THREADS = 2
"""Threads of a model job (gold, patch, model routes)."""


def shard_priority(wildcards):
    """Model jobs of earlier shards first, every condition of a shard together (its clean passes are then shared).

    (Patching one layer and span after another, so that their analyses overlap the model's work, measured slower
    on 2 cores: a 2-thread model job then waits for both cores to come free between analysis jobs.)
    """
    return 1000 - int(wildcards.shard)


def gold_priority(wildcards):
    """Gold shards in order, the deepest layer of a shard first: its forward keeps every shallower block's
    states at the shard's positions, so in the model server one forward serves every layer of a shard."""
    return 1000 * (1000 - int(wildcards.shard)) + parse_point(wildcards.layer).layer


def model_resources(base_mb=8000):
    """``resources:`` of a model job: one GPU unless the run is pinned to the CPU, memory growing on retry.

    A cluster profile maps ``gpu=1`` to ``--gpus=1``.
    """
    return {"gpu": 0 if config["device"] == "cpu" else 1, "mem_mb": mem_mb(base_mb)}


def preload_run_model():
    """From ``onstart`` (a local run that executes jobs; never a dry run, a cluster submission or a job's own
    Snakemake, which run no hooks): load the run's model in its server while the jobs before the first model job
    run, when the plan has model jobs (causal_kl.jobs.gold.preload_plan)."""
    if CLUSTER_GROUPS or not workflow.local_exec or not config.get("model_server", True):
        return
    from causal_kl.jobs.gold import preload_plan
    from causal_kl.server import preload_in_background

    jobs = list(workflow.dag.needrun_jobs())
    outputs = [str(f) for job in jobs for f in job.output]
    if preload_plan({job.rule.name for job in jobs}, outputs, MODEL["path"]):
        preload_in_background(
            "causal_kl.jobs.gold:preload_model",
            {"model": MODEL_BLOCK, "dtype": config["dtype"], "device": config["device"]},
            f"{LOGS}/model_preload.log",
            device=config["device"],
            server_log=f"{LOGS}/model_server.log",
            expect_model={"path": MODEL["path"], "dtype": config["dtype"]},
        )


ANALYSIS_SERVER = []
"""The analysis server this invocation started (``start_analysis_server``), to stop at its end."""


def start_analysis_server():
    """From ``onstart`` (a local run that executes jobs): a warm process that forks each analysis job with pandas,
    pyarrow and matplotlib already imported (causal_kl.analysis_server), unless the rules run in conda envs of their
    own (the server runs in Snakemake's) or on a cluster (each job on its own node)."""
    if CLUSTER_GROUPS or not workflow.local_exec or workflow.deployment_settings.deployment_method:
        return
    from causal_kl.analysis_server import start

    ANALYSIS_SERVER.append(start(f"{LOGS}/analysis_server.log"))


def stop_analysis_server():
    from causal_kl.analysis_server import stop

    while ANALYSIS_SERVER:
        stop(ANALYSIS_SERVER.pop())


def stop_model_servers():
    """Stop the model servers this Snakemake process owns (they would also go when it exits), unless
    ``model_server: {keep_s: N}`` keeps them for the run's next invocation (causal_kl.server.end_of_invocation)."""
    from causal_kl.server import end_of_invocation

    end_of_invocation(os.getpid())


def external(path):
    """A param standing for the content of a file or folder the workflow does not make (fingerprint), in every
    config: replacing the file behind the same path changes it, so Snakemake reruns what read the file.

    The files the run's own rules make (``MADE``: the demo's corpus, model and SAEs) are Snakemake inputs of the
    rules that read them instead.
    """
    return None if os.path.normpath(path) in MADE else content_fingerprint(path)


MODEL_BLOCK = canonical({k: v for k, v in MODEL.items() if k != "layer"})
"""The model block a job reads: its layer comes from the job's ``{layer}`` wildcard, so adding a layer to
model.layer reruns nothing of the layers already there."""


def model_params():
    """The params every model job reads: the model block (and what its folder holds), dtype and device."""
    return {
        "model": MODEL_BLOCK,
        "model_fingerprint": external(MODEL["path"]),
        "dtype": config["dtype"],
        "device": config["device"],
    }


PATCH_PARAMS = canonical({k: config["patch"][k] for k in ("method", "sites_per_batch")})
"""What a patch job's numbers depend on (not the list of spans: adding a span reruns no other span)."""


def stored_base(wildcards):
    """The NLA base.parquet holding a layer's stored golds: the configured one, or the one the demo writes."""
    if config["gold"]["stored"]:
        return layer_path(config["gold"]["stored"], wildcards.layer)
    return f"{R}/L{wildcards.layer}/base.parquet"


def reads_stored_gold(point):
    """Whether a point's conditions read stored golds: an NLA base.parquet holds the residual stream (resid_post) only,
    so a point at another hook always reads the golds extracted there."""
    stored = config["gold"].get("stored") or config["gold"].get("write_demo_base")
    return bool(stored) and parse_point(point).hook == RESID_POST


def stored_gold():
    """An input function: the golds the conditions read at the job's point: the NLA base.parquet (converted) when one
    is configured (resid_post points), else the extracted ones."""
    return lambda w: f"{R}/L{w.layer}/{'stored_gold' if reads_stored_gold(w.layer) else 'gold'}.parquet"


def input_point(wildcards):
    """The point whose golds the job's route reads: a transcoder's input hook at the job's layer, else the job's point."""
    point = parse_point(wildcards.layer)
    return Point(point.layer, route_hook_in(config, wildcards.route)).name


def transcoder_gold(wildcards):
    """An input function: a transcoder's input golds (``L{layer}.{hook_in}/gold.parquet``); nothing for an SAE."""
    name = input_point(wildcards)
    return [f"{R}/L{name}/gold.parquet"] if name != wildcards.layer else []


def transcoder_span_gold(wildcards):
    """An input function: a transcoder's input golds at a span's extra positions; nothing for an SAE."""
    name = input_point(wildcards)
    return [f"{R}/L{name}/span{wildcards.span}/gold.parquet"] if name != wildcards.layer else []


def reference_input(name):
    """The published table a table rule compares with, as an input (only when the run shows the reference)."""
    return [str(REFERENCE_DIR / f"{name}.csv")] if SHOW_REF else []


def run_targets():
    """Every output of the run but the shards: planned (and shown by ``snakemake -n``) before sites exist."""
    targets = [f"{R}/run.json", f"{R}/sites.parquet", f"{R}/report.html"] + across_layer_targets()
    targets += [f"{R}/L{point}/gold.parquet" for point in GOLD_POINTS]
    for point in POINTS:
        targets += [f"{R}/L{point}/patch.json"] + analysis_targets(point)
    return targets


def shard_targets(wildcards):
    """The shards themselves, so that a deleted or failed shard is rebuilt by a plain ``snakemake``."""
    shards = shard_ids()
    targets = []
    for point in GOLD_POINTS:
        targets += expand(f"{R}/L{point}/gold/shard_{{shard}}.parquet", shard=shards)
    for layer in POINTS:
        for k in spans_at(layer):
            if k > 1:
                targets += expand(f"{R}/L{layer}/span{k}/gold/shard_{{shard}}.parquet", shard=shards)
            for name in ["floors", *[r for r in routes_of(layer) if k in spans_of(r)]]:
                targets += expand(f"{R}/L{layer}/span{k}/patch/{name}/shard_{{shard}}.parquet", shard=shards)
    return targets


AN = config["analysis"]
FIGS = AN["figures"]
BOOTSTRAP = {"n_boot": AN["bootstrap"], "seed": config["seed"], "ci": AN["ci"]}
"""The site bootstrap of every CI (tables and statistics)."""
FIG_NAMES = {"fig1": "fig1_geometry_vs_kl", "fig2": "fig2_damage_per_energy", "fig3": "fig3_kl_by_offset"}
ROUTE_TABLES = ("conditions", "quartiles", "offsets", "token_classes")
STATS = ("correlation", "paired", "energy", "floor_offsets")
WHOLE_CONTEXT = config["whole_context"]["enabled"]
SPAN_OFFSETS = [0, 1, 5, 31]
"""The offsets after a span's last position that the span comparison reports (0: the first token after it)."""


def figure_outputs(path, caption=None):
    """A figure rule's outputs: ``path``.png (in Snakemake's report, with its caption) and ``path``.svg."""
    name = Path(path).name
    caption = caption or next((k for k, v in FIG_NAMES.items() if v == name), "fig_routes")
    sub = "{route}" if "{route}" in path else "all routes"
    return {
        "png": report(f"{path}.png", caption=f"../reports/{caption}.rst", category="Figures", subcategory=sub),
        "svg": f"{path}.svg",
    }


def analysis_targets(layer):
    """Every table, statistic and figure of one point (``layer``: its name), plus its gate."""
    L = f"{R}/L{layer}"
    routes = routes_of(layer)
    # the recorded choices and noise too: deleting one rebuilds it (and what read it) on a plain `snakemake`
    t = [f"{L}/gate.json"] + [f"{L}/conditions/{name}.parquet" for name in ("choices", "mean", "noise")]
    for k in spans_at(layer)[1:]:
        t += [f"{L}/span{k}/conditions/{name}.parquet" for name in ("choices", "noise")] + [f"{L}/span{k}/gold.parquet"]
    for r in routes:
        t += [f"{L}/tables/{r}/{name}.csv" for name in ROUTE_TABLES]
        t += [f"{L}/stats/{r}/{name}.json" for name in STATS] + [f"{L}/stats/{r}.json"]
        t += [f"{L}/figures/{r}/{f}.{ext}" for f in FIG_NAMES.values() for ext in ("png", "svg")]
        if WHOLE_CONTEXT:
            t += [f"{L}/whole_context/{r}.json"]
        if config["routes"][r]["kind"] == "sae":
            t += [f"{L}/sae/{r}.json"]
        for k in extra_spans_of(r):
            t += [
                f"{L}/span{k}/tables/{r}/conditions.csv",
                f"{L}/span{k}/tables/{r}/offsets.csv",
                f"{L}/span{k}/figures/{r}/fig3_kl_by_offset.png",
            ]
        if extra_spans_of(r):
            t += [f"{L}/tables/{r}/spans.csv"] + [f"{L}/figures/{r}/spans.{ext}" for ext in ("png", "svg")]
    if routes:
        t += [f"{L}/tables/routes.csv", f"{L}/tables/frontier.csv"]
        t += [
            f"{L}/figures/{f}.{ext}"
            for f in list(FIG_NAMES.values()) + ["routes_comparison", "frontier"]
            for ext in ("png", "svg")
        ]
    return t


def across_layer_targets():
    """The cross-layer tables and figures: the layers' comparison and frontier (a sweep with routes only). They compare
    the residual-stream points (``LAYERS``, resid_post) only: a point at another hook is in its own section, its numbers
    in another space than the layers'."""
    if len(LAYERS) < 2 or not any(routes_of(layer) for layer in LAYERS):
        return []
    return [f"{R}/tables/{name}.csv" for name in ("layers", "frontier")] + [
        f"{R}/figures/{name}.{ext}" for name in ("layers", "frontier") for ext in ("png", "svg")
    ]


# ----------------------------------------------------------------------------- routes (rules/recon.smk)
def route_regex(*kinds):
    """A wildcard constraint matching exactly the configured routes of these kinds (nothing when none)."""
    names = [name for name, route in config["routes"].items() if route["kind"] in kinds]
    return "|".join(re.escape(n) for n in names) if names else "(?!)"


ROUTE_KEYS_OF_NO_CONSEQUENCE = ("expected_fve", "fve_tolerance", "hook", "layer", "spans")
"""Route keys a reconstruction does not depend on: the geometry re-check, and which points (layers, hook) and spans the
route covers (the point is the job's ``{layer}`` wildcard: its golds are an input)."""


def route_params(wildcards):
    """What a route's reconstruction depends on: its config entry without the keys of no consequence; a named SAE
    (release + sae_id, repo + folder) also pinned to the revision the hub cache holds at the job's layer (``hub``:
    the jobs read exactly that commit, without SAELens' release list), so a new cached revision reruns what read it."""
    entry = route_config(wildcards)
    params = {k: v for k, v in entry.items() if k not in ROUTE_KEYS_OF_NO_CONSEQUENCE}
    if entry["kind"] == "sae" and is_named_sae(entry):
        params["hub"] = named_sae(wildcards).pin()
    return canonical(params)


def named_sae(wildcards):
    """The hub cache's copy of a named SAE route's SAE at the job's layer (``causal_kl.sae_hub.HubSAE``)."""
    return resolve_named_sae(
        route_config(wildcards), parse_point(wildcards.layer).layer, CONFIG_SOURCE, wildcards.route
    )


def route_path(wildcards, key="path"):
    """A route's file or folder at the job's layer (``{layer}`` filled in)."""
    return layer_path(route_config(wildcards)[key], wildcards.layer)


def demo_sublayer_golds(role):
    """An input function of ``demo_sublayer_sae``: the training golds of a demo SAE inside a block, at its hook (a skip
    transcoder's targets at mlp_out, ``role="target"``, and its inputs at mlp_in, ``role="input"``; none for an SAE)."""

    def golds(w):
        start, stop = config["demo"]["sae"]["train_rows"]
        transcoder = w.kind == "skip_transcoder"
        if role == "input" and not transcoder:
            return []
        hook = ("mlp_in" if role == "input" else "mlp_out") if transcoder else w.kind
        path = f"{R}/L{w.layer}.{hook}/train_gold/rows_{start}_{stop}.parquet"
        return [path] if role == "input" else path

    return golds


def train_rows_gold(wildcards):
    """Training golds are shared by every route that trains on the same rows (none for routes that do not train)."""
    entry = route_config(wildcards)
    if "train_rows" not in entry:
        return []
    start, stop = entry["train_rows"]
    return [f"{R}/L{wildcards.layer}/train_gold/rows_{start}_{stop}.parquet"]


def route_files(wildcards):
    """The files a ``file`` route reads at the job's layer (none for other kinds)."""
    entry = route_config(wildcards)
    return file_route_inputs({**entry, "path": route_path(wildcards)}) if entry["kind"] == "file" else []


def sae_input(wildcards):
    """An ``sae`` route's SAE as an input when the demo builds it (else a fingerprint param stands for it)."""
    entry = route_config(wildcards)
    if entry["kind"] != "sae" or is_named_sae(entry):
        return []
    path = route_path(wildcards)
    return [path] if os.path.normpath(path) in MADE else []


def sae_fingerprint(wildcards):
    """What an ``sae`` route's SAE is: a local one's content (``external``), a named one's cached revision
    (``repo@commit/folder``, in every config: the demo's own SAEs are never named)."""
    entry = route_config(wildcards)
    if entry["kind"] != "sae":
        return None
    if is_named_sae(entry):
        return named_sae(wildcards).fingerprint()
    return external(route_path(wildcards)) if not sae_input(wildcards) else None


def checkpoint_path(wildcards):
    """The AR checkpoint a route's reconstruction reads (an nla_av route's second step reads its AR)."""
    route = route_config(wildcards)
    return route["ar_checkpoint"] if route["kind"] == "nla_av" else route["checkpoint"]


def local_checkpoint(wildcards):
    """A route's AR checkpoint directory as an input when it is a local path (a hub id is not a file)."""
    route = route_config(wildcards)
    if route["kind"] not in ("nla_ar", "nla_av"):
        return []
    path = checkpoint_path(wildcards)
    return [path] if Path(path).exists() else []


def nla_explanations(wildcards):
    """nla_av routes make their explanations; nla_ar routes read them from the configured file."""
    route = route_config(wildcards)
    if route["kind"] == "nla_av":
        return [f"{R}/L{wildcards.layer}/explanations/{wildcards.route}.parquet"]
    if route["kind"] == "nla_ar":
        return [route["explanations"]]
    return []


def reconstructor_fingerprints(wildcards):
    """Fingerprints of the external files a route's reconstructor reads (what reruns it when they change)."""
    entry = route_config(wildcards)
    files = [*route_files(wildcards), *(nla_explanations(wildcards) if entry["kind"] == "nla_ar" else [])]
    return canonical(
        {
            "files": [external(f) for f in files],
            "sae": sae_fingerprint(wildcards),
            "checkpoint": external(checkpoint_path(wildcards)) if entry["kind"] in ("nla_ar", "nla_av") else None,
        }
    )


# ----------------------------------------------------------------------------- patches (rules/patch.smk)
def span_file(path):
    """An input function: ``path`` for a span of more than one position, nothing for the single-site splice."""
    return lambda w: [path.format(**dict(w.items()))] if int(w.span) > 1 else []


def span_choices(w):
    """The resample choices of a span: the site choices for 1, the span's own (among sites whose span fits) else."""
    return (
        f"{R}/L{w.layer}/conditions/choices.parquet"
        if int(w.span) == 1
        else f"{R}/L{w.layer}/span{w.span}/conditions/choices.parquet"
    )


# ----------------------------------------------------------------------------- tables (rules/tables.smk)
def sae_routes_of(pattern):
    """An input function: ``pattern`` for every ``sae`` route of the job's layer."""
    return lambda w: [
        pattern.format(layer=w.layer, route=r) for r in routes_of(w.layer) if config["routes"][r]["kind"] == "sae"
    ]


# ----------------------------------------------------------------------------- report (rules/report.smk)
def figure_files(path):
    """A figure in a report manifest: its PNG and SVG (the report embeds whichever is smaller)."""
    return {"png": f"{path}.png", "svg": f"{path}.svg"}


def route_manifest(layer, route):
    """What a route's page shows, file by file: its tables, statistics, figures, SAELens-comparable scores, SAE
    sparsity and spans at ``layer`` (a route the layer does not have is an error)."""
    route_config(SimpleNamespace(layer=str(layer), route=route))
    L = f"{R}/L{layer}"
    files = {name: f"{L}/tables/{route}/{name}.csv" for name in ROUTE_TABLES}
    files["stats"] = f"{L}/stats/{route}.json"
    files.update({key: figure_files(f"{L}/figures/{route}/{name}") for key, name in FIG_NAMES.items()})
    if WHOLE_CONTEXT:
        files["whole_context"] = f"{L}/whole_context/{route}.json"
    if config["routes"][route]["kind"] == "sae":
        files["sae"] = f"{L}/sae/{route}.json"
    if extra_spans_of(route):
        files["spans"] = {
            "table": f"{L}/tables/{route}/spans.csv",
            "figure": figure_files(f"{L}/figures/{route}/spans"),
            "per_span": {
                str(k): {
                    "conditions": f"{L}/span{k}/tables/{route}/conditions.csv",
                    "offsets": f"{L}/span{k}/tables/{route}/offsets.csv",
                    "fig3": figure_files(f"{L}/span{k}/figures/{route}/fig3_kl_by_offset"),
                    "recon": f"{L}/span{k}/recon/{route}.parquet",
                    "sites": f"{L}/span{k}/sites.json",
                }
                for k in extra_spans_of(route)
            },
        }
    return canonical(files)


def route_page(layer, route):
    """The page of one route at one point (``layer``: its name), beside the main page."""
    return f"{R}/report/L{layer}/{route}.html"


def route_pages():
    """Every route page of the run (each its own target: adding a route builds only its pages)."""
    return [route_page(point, r) for point in POINTS for r in routes_of(point)]


def route_settings(route):
    """A route's config entry as its page shows it: what its reconstruction depends on, keys sorted (not the layers it
    covers: adding a layer leaves the route's other pages alone)."""
    entry = config["routes"][route]
    return canonical({k: entry[k] for k in entry if k not in ROUTE_KEYS_OF_NO_CONSEQUENCE})


def report_manifest():
    """What the main page shows, file by file: per layer its gate, the page of each route, the all-routes comparison
    (routes table and figures) and the sparsity-damage frontier; the cross-layer table, figure and frontier of a
    sweep. Route pages have their own manifest (route_manifest)."""
    layers = {}
    for layer in POINTS:  # a section per point: "3", "3.mlp_out"
        L = f"{R}/L{layer}"
        routes = {r: route_page(layer, r) for r in routes_of(layer)}
        comparison, frontier = {}, {}
        if routes:
            comparison = {
                "routes": f"{L}/tables/routes.csv",
                "fig_routes": figure_files(f"{L}/figures/routes_comparison"),
                **{key: figure_files(f"{L}/figures/{name}") for key, name in FIG_NAMES.items()},
            }
            frontier = {"table": f"{L}/tables/frontier.csv", "figure": figure_files(f"{L}/figures/frontier")}
        layers[str(layer)] = {
            "gate": f"{L}/gate.json",
            "routes": routes,
            "comparison": comparison,
            "frontier": frontier,
        }
    across = {}
    if across_layer_targets():
        across = {
            "table": f"{R}/tables/layers.csv",
            "figure": figure_files(f"{R}/figures/layers"),
            "frontier": {"table": f"{R}/tables/frontier.csv", "figure": figure_files(f"{R}/figures/frontier")},
        }
    return canonical({"layers": layers, "across": across, "spans": SPANS})


def manifest_files(node):
    """Every path in a manifest (its files are the report's inputs), except the route pages the main page links to."""
    if isinstance(node, str):
        return [node] if not node.endswith(".html") else []
    if isinstance(node, dict):
        return [p for v in node.values() for p in manifest_files(v)]
    return []


REPORT_MANIFEST = report_manifest()
