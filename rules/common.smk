# Shared by every rule: the parse-time steps (causal_kl.workflow_setup, one call each), run paths, shard ids,
# wildcard constraints, resources, input functions.
import functools
import json
import os
import re
import sys
from pathlib import Path
from types import SimpleNamespace

from snakemake.utils import validate

from causal_kl.demo_paths import (
    DEMO_SUBLAYER_KINDS,
    demo_sae_dir,
    demo_sae_ks,
    made_by_workflow,
)
from causal_kl.config import (
    run_identity,
    canonical,
    gold_points,
    layer_path,
    route_layers,
    route_hook_in,
    route_spans,
    route_points,
    routes_at,
    run_layers,
    run_points,
    run_spans,
    show_reference,
)
from causal_kl.errors import CausalKLError
from causal_kl.hooks import RESID_POST, Point, parse_point
from causal_kl.io import content_fingerprint
from causal_kl.paths import FIG_NAMES, ROUTE_TABLES, STATS, figure_files, fill, for_run, log_roots
from causal_kl.reference import REFERENCE_DIR
from causal_kl.routes.file import input_files as file_route_inputs
from causal_kl.sae_hub import is_named as is_named_sae, resolve_named as resolve_named_sae
from causal_kl.spans import check_spans_fit
from causal_kl.workflow_setup import (
    check_run_config,
    cluster_blocks,
    declare_model_groups,
    groups_model_jobs,
    keep_model_servers,
    limit_model_jobs_to_gpus,
    plan_work_ahead,
    preload_run_model,
    rebuild_missing_results,
    remove_work_ahead_plan,
    sort_config_keys,
    start_allocation_servers,
    start_analysis_server,
    stop_analysis_server,
    stop_model_servers,
    wrap_cluster_internals,
)

# what acts at parse time is causal_kl.workflow_setup, one call a step (docs/ARCHITECTURE.md: parse time)
CONFIG_SOURCE = check_run_config(workflow, config, sys.argv[1:])
validate(config, "../config/schema/config.schema.yaml")
sort_config_keys(config)
limit_model_jobs_to_gpus(workflow, sys.argv[1:])
CLUSTER_GROUPS = groups_model_jobs(workflow, sys.argv[1:])
"""Whether the model rules are grouped (a cluster): the Snakefile's declare_model_groups gives them their groups."""
SHARDS_PER_ALLOCATION = cluster_blocks(config, sys.argv[1:], CONFIG_SOURCE)
wrap_cluster_internals(CLUSTER_GROUPS)
keep_model_servers(config)
start_allocation_servers(workflow, config, sys.argv[1:])

RUN = config["run"]
P = for_run(RUN)
"""Every output path of the run (``causal_kl.paths``: each template spelled there once), the run filled in."""
R = P.root
LOGS, LL, LS = log_roots(RUN)
"""The run's logs (``causal_kl.paths.log_roots``), a point's (``{layer}`` is a wildcard naming a point: ``L3``,
``L3.mlp_out``) beside its outputs ``P.*``, and a span's (every span, 1 included): each rule's ``log:`` is under one."""

rebuild_missing_results(workflow, R)

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
    check_spans_fit(EXTRA_SPANS, P.sites, P.docs, CONFIG_SOURCE)


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
    return fill(P.base, layer=wildcards.layer)


def reads_stored_gold(point):
    """Whether a point's conditions read stored golds: an NLA base.parquet holds the residual stream (resid_post) only,
    so a point at another hook always reads the golds extracted there."""
    stored = config["gold"].get("stored") or config["gold"].get("write_demo_base")
    return bool(stored) and parse_point(point).hook == RESID_POST


def stored_gold():
    """An input function: the golds the conditions read at the job's point: the NLA base.parquet (converted) when one
    is configured (resid_post points), else the extracted ones."""
    return lambda w: fill(P.stored_gold if reads_stored_gold(w.layer) else P.gold, layer=w.layer)


def input_point(wildcards):
    """The point whose golds the job's route reads: a transcoder's input hook at the job's layer, else the job's point."""
    point = parse_point(wildcards.layer)
    return Point(point.layer, route_hook_in(config, wildcards.route)).name


def transcoder_gold(wildcards):
    """An input function: a transcoder's input golds (``L{layer}.{hook_in}/gold.parquet``); nothing for an SAE."""
    name = input_point(wildcards)
    return [fill(P.gold, layer=name)] if name != wildcards.layer else []


def transcoder_span_gold(wildcards):
    """An input function: a transcoder's input golds at a span's extra positions; nothing for an SAE."""
    name = input_point(wildcards)
    return [fill(P.span_gold, layer=name, span=wildcards.span)] if name != wildcards.layer else []


def reference_input(name):
    """The published table a table rule compares with, as an input (only when the run shows the reference)."""
    return [str(REFERENCE_DIR / f"{name}.csv")] if SHOW_REF else []


def run_targets():
    """Every output of the run but the shards: planned (and shown by ``snakemake -n``) before sites exist."""
    targets = [P.run_record, P.sites, P.report] + across_layer_targets()
    targets += [fill(P.gold, layer=point) for point in GOLD_POINTS]
    for point in POINTS:
        targets += [fill(P.patch_index, layer=point)] + analysis_targets(point)
    return targets


def shard_targets(wildcards):
    """The shards themselves, so that a deleted or failed shard is rebuilt by a plain ``snakemake``."""
    shards = shard_ids()
    targets = []
    for point in GOLD_POINTS:
        targets += expand(P.gold_shard, layer=point, shard=shards)
    for layer in POINTS:
        for k in spans_at(layer):
            if k > 1:
                targets += expand(P.span_gold_shard, layer=layer, span=k, shard=shards)
            targets += expand(P.floors_shard, layer=layer, span=k, shard=shards)
            for r in routes_of(layer):
                if k in spans_of(r):
                    targets += expand(P.patch_shard, layer=layer, span=k, route=r, shard=shards)
    return targets


AN = config["analysis"]
FIGS = AN["figures"]
BOOTSTRAP = {"n_boot": AN["bootstrap"], "seed": config["seed"], "ci": AN["ci"]}
"""The site bootstrap of every CI (tables and statistics)."""
WHOLE_CONTEXT = config["whole_context"]["enabled"]
SPAN_OFFSETS = [0, 1, 5, 31]
"""The offsets after a span's last position that the span comparison reports (0: the first token after it)."""


def figure_outputs(path, caption=None):
    """A figure rule's outputs: ``path``.png (in Snakemake's report, with its caption) and ``path``.svg."""
    name = Path(path).name
    caption = caption or next((k for k, v in FIG_NAMES.items() if v == name), "fig_routes")
    sub = "{route}" if "{route}" in path else "all routes"
    files = figure_files(path)
    return {
        "png": report(files["png"], caption=f"../reports/{caption}.rst", category="Figures", subcategory=sub),
        "svg": files["svg"],
    }


def analysis_targets(layer):
    """Every table, statistic and figure of one point (``layer``: its name), plus its gate."""
    at = functools.partial(fill, layer=layer)

    def figure(stem, **kw):
        return list(figure_files(at(stem, **kw)).values())

    routes = routes_of(layer)
    # the recorded choices and noise too: deleting one rebuilds it (and what read it) on a plain `snakemake`
    t = [at(P.gate)] + [at(path) for path in P.conditions.values()]
    for k in spans_at(layer)[1:]:
        t += [at(path, span=k) for path in P.span_conditions.values()] + [at(P.span_gold, span=k)]
    for r in routes:
        t += [at(P.route_tables[name], route=r) for name in ROUTE_TABLES]
        t += [at(P.route_stats[name], route=r) for name in STATS] + [at(P.route_record, route=r)]
        t += [f for key in FIG_NAMES for f in figure(P.route_figures[key], route=r)]
        if WHOLE_CONTEXT:
            t += [at(P.whole_context, route=r)]
        if config["routes"][r]["kind"] == "sae":
            t += [at(P.sae, route=r)]
        for k in extra_spans_of(r):
            t += [
                at(P.span_route_tables["conditions"], span=k, route=r),
                at(P.span_route_tables["offsets"], span=k, route=r),
                figure_files(at(P.span_route_figures["fig3"], span=k, route=r))["png"],
            ]
        if extra_spans_of(r):
            t += [at(P.route_tables["spans"], route=r)] + figure(P.route_figures["spans"], route=r)
    if routes:
        t += [at(P.point_tables["routes"]), at(P.point_tables["frontier"])]
        t += [f for key in [*FIG_NAMES, "routes", "frontier"] for f in figure(P.point_figures[key])]
    return t


def across_layer_targets():
    """The cross-layer tables and figures: the layers' comparison and frontier (a sweep with routes only). They compare
    the residual-stream points (``LAYERS``, resid_post) only: a point at another hook is in its own section, its numbers
    in another space than the layers'."""
    if len(LAYERS) < 2 or not any(routes_of(layer) for layer in LAYERS):
        return []
    return [P.run_tables[name] for name in ("layers", "frontier")] + [
        f for name in ("layers", "frontier") for f in figure_files(P.run_figures[name]).values()
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
        path = fill(P.train_gold, layer=f"{w.layer}.{hook}", start=start, stop=stop)
        return [path] if role == "input" else path

    return golds


def train_rows_gold(wildcards):
    """Training golds are shared by every route that trains on the same rows (none for routes that do not train)."""
    entry = route_config(wildcards)
    if "train_rows" not in entry:
        return []
    start, stop = entry["train_rows"]
    return [fill(P.train_gold, layer=wildcards.layer, start=start, stop=stop)]


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
        return [fill(P.explanations, layer=wildcards.layer, route=wildcards.route)]
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
    if int(w.span) == 1:
        return fill(P.conditions["choices"], layer=w.layer)
    return fill(P.span_conditions["choices"], layer=w.layer, span=w.span)


# ----------------------------------------------------------------------------- tables (rules/tables.smk)
def sae_routes_of(pattern):
    """An input function: ``pattern`` for every ``sae`` route of the job's layer."""
    return lambda w: [
        pattern.format(layer=w.layer, route=r) for r in routes_of(w.layer) if config["routes"][r]["kind"] == "sae"
    ]


# ----------------------------------------------------------------------------- report (rules/report.smk)
def route_manifest(layer, route):
    """What a route's page shows, file by file: its tables, statistics, figures, SAELens-comparable scores, SAE
    sparsity and spans at ``layer`` (a route the layer does not have is an error)."""
    route_config(SimpleNamespace(layer=str(layer), route=route))
    at = functools.partial(fill, layer=layer, route=route)
    files = {name: at(P.route_tables[name]) for name in ROUTE_TABLES}
    files["stats"] = at(P.route_record)
    files.update({key: figure_files(at(P.route_figures[key])) for key in FIG_NAMES})
    if WHOLE_CONTEXT:
        files["whole_context"] = at(P.whole_context)
    if config["routes"][route]["kind"] == "sae":
        files["sae"] = at(P.sae)
    if extra_spans_of(route):
        files["spans"] = {
            "table": at(P.route_tables["spans"]),
            "figure": figure_files(at(P.route_figures["spans"])),
            "per_span": {
                str(k): {
                    "conditions": at(P.span_route_tables["conditions"], span=k),
                    "offsets": at(P.span_route_tables["offsets"], span=k),
                    "fig3": figure_files(at(P.span_route_figures["fig3"], span=k)),
                    "recon": at(P.span_recon, span=k),
                    "sites": at(P.span_sites, span=k),
                }
                for k in extra_spans_of(route)
            },
        }
    return canonical(files)


def route_page(layer, route):
    """The page of one route at one point (``layer``: its name), beside the main page."""
    return fill(P.route_page, layer=layer, route=route)


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
        at = functools.partial(fill, layer=layer)
        routes = {r: route_page(layer, r) for r in routes_of(layer)}
        comparison, frontier = {}, {}
        if routes:
            comparison = {
                "routes": at(P.point_tables["routes"]),
                "fig_routes": figure_files(at(P.point_figures["routes"])),
                **{key: figure_files(at(P.point_figures[key])) for key in FIG_NAMES},
            }
            frontier = {
                "table": at(P.point_tables["frontier"]),
                "figure": figure_files(at(P.point_figures["frontier"])),
            }
        layers[str(layer)] = {
            "gate": at(P.gate),
            "routes": routes,
            "comparison": comparison,
            "frontier": frontier,
        }
    across = {}
    if across_layer_targets():
        across = {
            "table": P.run_tables["layers"],
            "figure": figure_files(P.run_figures["layers"]),
            "frontier": {"table": P.run_tables["frontier"], "figure": figure_files(P.run_figures["frontier"])},
        }
    return canonical({"layers": layers, "across": across, "spans": SPANS})


def manifest_files(node):
    """Every path in a manifest (its files are the report's inputs), except the route pages the main page links to."""
    if isinstance(node, str):
        return [node] if node not in route_pages() else []
    if isinstance(node, dict):
        return [p for v in node.values() for p in manifest_files(v)]
    return []


REPORT_MANIFEST = report_manifest()
