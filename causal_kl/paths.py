"""Every output path of a run, spelled once: templates relative to the run's folder ``results/{run}``.

Three levels (docs/PATHS.md): the run, a **point** ``L{layer}`` (the wildcard keeps the name ``layer``: ``3`` for
block 3's output, ``3.mlp_out`` for a hook inside it) and a **span** ``L{layer}/span{span}``. A template's other
fields are Snakemake's wildcards (``{route}``, ``{shard}``, ``{start}``, ``{stop}``); :func:`fill` fills some of
them and leaves the rest as wildcards. A family of files that differ by one name (a route's four tables, a point's
figures) is a mapping name -> template. A **figure** is a stem: its files are the stem's ``.png`` and ``.svg``.

Everything that names a run's outputs reads this table: the rules' outputs and inputs, the target lists and the
report manifests of ``rules/common.smk`` (through :func:`for_run`), ``checks.check_targets`` (which folder names a
route: :func:`route_slots`), ``report.route_page_path``; ``tests/test_layout.py`` holds every rule's output and
every path docs/PATHS.md lists to it. The run's logs (``LOG_DIR``) are here too: each rule's ``log:`` sits under
:func:`log_roots`. Torch-free, numpy-free: read at parse time.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

RESULTS = "results"
RUN_DIR = f"{RESULTS}/{{run}}"
"""A run's folder: every template below is relative to it."""
POINT = "L{layer}"
SPAN = f"{POINT}/span{{span}}"

CONDITIONS = ("choices", "mean", "noise")
"""A point's recorded condition inputs (``conditions/{name}.parquet``)."""
SPAN_CONDITIONS = ("choices", "noise")
"""A span's (k > 1) recorded condition inputs."""
ROUTE_TABLES = ("conditions", "quartiles", "offsets", "token_classes")
"""The write-up's tables of a route at a point (span 1)."""
SPAN_ROUTE_TABLES = ("conditions", "offsets")
"""The tables of a route at a span of k > 1 positions."""
STATS = ("correlation", "paired", "energy", "floor_offsets")
"""One statistic per file of a route at a point; the route's merged record is ``route_record``."""
FIG_NAMES = {"fig1": "fig1_geometry_vs_kl", "fig2": "fig2_damage_per_energy", "fig3": "fig3_kl_by_offset"}
"""The write-up's figures: per route, and all routes of a point side by side (same file names)."""
FIGURE_EXTS = ("png", "svg")

LOG_DIR = "logs/{run}"
"""A run's logs, beside its results: each rule's ``log:`` file sits under it at its outputs' level (the run, a point,
a span: :func:`log_roots`), with the logs no rule names (``RUN_LOGS``)."""
RUN_LOGS = {"model_server": "model_server.log", "model_preload": "model_preload.log",
            "analysis_server": "analysis_server.log"}
"""The run's logs that no rule's ``log:`` names, relative to ``LOG_DIR``: the model servers' (their event records
beside it, ``model_server.jsonl``), a local run's model preload and its analysis server."""

TEMPLATES: dict[str, str | dict[str, str]] = {
    # ------------------------------------------------------------------ the run
    "run_record": "run.json",
    "docs": "docs.parquet",
    "sites": "sites.parquet",
    "site_shards": "sites",  # a folder: the sites checkpoint's shards
    "site_shard": "sites/shard_{shard}.parquet",
    "sites_stats": "sites.json",
    "run_tables": {name: f"tables/{name}.csv" for name in ("layers", "frontier")},
    "run_figures": {name: f"figures/{name}" for name in ("layers", "frontier")},
    "report": "report.html",
    "route_page": "report/L{layer}/{route}.html",
    # ------------------------------------------------------------------ a point
    "gold_shard": f"{POINT}/gold/shard_{{shard}}.parquet",
    "gold": f"{POINT}/gold.parquet",
    "base": f"{POINT}/base.parquet",
    "stored_gold": f"{POINT}/stored_gold.parquet",
    "reextract": f"{POINT}/reextract.parquet",
    "reextract_summary": f"{POINT}/reextract.json",
    "conditions": {name: f"{POINT}/conditions/{name}.parquet" for name in CONDITIONS},
    "train_gold": f"{POINT}/train_gold/rows_{{start}}_{{stop}}.parquet",
    "recon": f"{POINT}/recon/{{route}}.parquet",
    "explanations": f"{POINT}/explanations/{{route}}.parquet",
    "sae": f"{POINT}/sae/{{route}}.json",
    "geometry": f"{POINT}/geometry/{{route}}.parquet",
    "geometry_summary": f"{POINT}/geometry/{{route}}.json",
    "whole_context": f"{POINT}/whole_context/{{route}}.json",
    "patch_index": f"{POINT}/patch.json",
    "error_norms": f"{POINT}/analysis/error_norms.parquet",
    "per_site": f"{POINT}/analysis/{{route}}/per_site.parquet",
    "route_tables": {name: f"{POINT}/tables/{{route}}/{name}.csv" for name in (*ROUTE_TABLES, "spans")},
    "point_tables": {name: f"{POINT}/tables/{name}.csv" for name in ("routes", "frontier")},
    "route_stats": {name: f"{POINT}/stats/{{route}}/{name}.json" for name in STATS},
    "route_record": f"{POINT}/stats/{{route}}.json",
    "route_figures": {**{key: f"{POINT}/figures/{{route}}/{name}" for key, name in FIG_NAMES.items()},
                      "spans": f"{POINT}/figures/{{route}}/spans"},
    "point_figures": {**{key: f"{POINT}/figures/{name}" for key, name in FIG_NAMES.items()},
                      "routes": f"{POINT}/figures/routes_comparison", "frontier": f"{POINT}/figures/frontier"},
    "gate": f"{POINT}/gate.json",
    # ------------------------------------------------------------------ a span (floors and patches: every span)
    "span_sites": f"{SPAN}/sites.json",
    "span_gold_shard": f"{SPAN}/gold/shard_{{shard}}.parquet",
    "span_gold": f"{SPAN}/gold.parquet",
    "span_conditions": {name: f"{SPAN}/conditions/{name}.parquet" for name in SPAN_CONDITIONS},
    "span_recon": f"{SPAN}/recon/{{route}}.parquet",
    "floors_shard": f"{SPAN}/patch/floors/shard_{{shard}}.parquet",
    "patch_shard": f"{SPAN}/patch/{{route}}/shard_{{shard}}.parquet",
    "floors": f"{SPAN}/patch/floors.parquet",
    "patch": f"{SPAN}/patch/{{route}}.parquet",
    "span_route_tables": {name: f"{SPAN}/tables/{{route}}/{name}.csv" for name in SPAN_ROUTE_TABLES},
    "span_route_figures": {"fig3": f"{SPAN}/figures/{{route}}/{FIG_NAMES['fig3']}"},
}
"""name -> template (or a family: name -> {member: template}), relative to the run's folder."""

FIGURES = frozenset({"run_figures", "point_figures", "route_figures", "span_route_figures"})
"""The entries whose templates are figure stems (files: ``stem.png``, ``stem.svg``)."""
FOLDERS = frozenset({"site_shards"})
"""The entries that are folders (a ``directory()`` output), not files."""

_FIELD = re.compile(r"\{(\w+)\}")


def fill(template: str, **values: object) -> str:
    """``template`` with the fields named in ``values`` filled in; any other ``{field}`` is left as a wildcard."""
    return _FIELD.sub(lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), template)


def _rooted(node: str | dict, root: str) -> str | dict:
    return f"{root}/{node}" if isinstance(node, str) else {k: _rooted(v, root) for k, v in node.items()}


def for_run(run: str) -> SimpleNamespace:
    """The registry rooted at ``results/{run}`` with the run filled in: ``for_run("demo").gold`` is
    ``results/demo/L{layer}/gold.parquet``; a family is a dict (``.route_tables["conditions"]``). Also ``.root``."""
    root = fill(RUN_DIR, run=run)
    return SimpleNamespace(root=root, **{name: _rooted(node, root) for name, node in TEMPLATES.items()})


def log_roots(run: str) -> tuple[str, str, str]:
    """The run's log folder, a point's and a span's, the run filled in (``logs/demo``, ``logs/demo/L{layer}``,
    ``logs/demo/L{layer}/span{span}``): what ``rules/common.smk`` calls ``LOGS``, ``LL`` and ``LS``."""
    root = fill(LOG_DIR, run=run)
    return root, f"{root}/{POINT}", f"{root}/{SPAN}"


def run_log(run: str, name: str) -> str:
    """One of the run's ``RUN_LOGS`` (``run_log("demo", "model_server")``: ``logs/demo/model_server.log``)."""
    return f"{fill(LOG_DIR, run=run)}/{RUN_LOGS[name]}"


def in_point(name: str) -> str:
    """Entry ``name``'s template relative to its point's folder (``patch_index``: ``patch.json``)."""
    template = TEMPLATES[name]
    assert isinstance(template, str) and template.startswith(f"{POINT}/"), name
    return template[len(POINT) + 1:]


def fields(template: str, path: object) -> dict[str, str] | None:
    """The wildcards ``path`` gives ``template``'s fields, read back from its end (``path`` may sit in any folder:
    ``fields(TEMPLATES["patch"], "results/demo/L3/span2/patch/floors.parquet")`` is ``{"layer": "3", "span": "2",
    "route": "floors"}``); None when it is not such a path. A field spans no ``/``."""
    pattern = "".join(re.escape(part) if i % 2 == 0 else f"(?P<{part}>[^/]+)"
                      for i, part in enumerate(_FIELD.split(template)))
    m = re.search(f"(?:^|/){pattern}$", str(path))
    return m.groupdict() if m else None


def figure_files(stem: str) -> dict[str, str]:
    """A figure's files: ``{"png": stem.png, "svg": stem.svg}``."""
    return {ext: f"{stem}.{ext}" for ext in FIGURE_EXTS}


def file_templates(root: str = RUN_DIR) -> dict[str, str]:
    """Every output of a run as ``{template: entry name}`` (figures as their ``.png`` and ``.svg``, a folder as
    itself), rooted at ``root`` (``results/{run}``, or a run's folder)."""
    out = {}
    for name, node in TEMPLATES.items():
        for member, template in (node.items() if isinstance(node, dict) else [(None, node)]):
            label = f"{name}[{member}]" if member else name
            stems = figure_files(template).values() if name in FIGURES else [template]
            out.update({f"{root}/{t}": label for t in stems})
    return out


def _point_parts() -> list[list[str]]:
    """The path components of every point and span template after its ``L{layer}/`` (and ``span{span}/``)."""
    parts = []
    for template in file_templates(""):
        p = template.lstrip("/").split("/")
        if p[0] == POINT:
            p = p[2:] if len(p) > 1 and p[1] == "span{span}" else p[1:]
            parts.append(p)
    return parts


def route_slots() -> tuple[str, ...]:
    """Folders of a point (and of its spans) whose next path component names a route (``tables/{route}/...``,
    ``recon/{route}.parquet``)."""
    return tuple(sorted({p[0] for p in _point_parts() if len(p) > 1 and p[1].startswith("{route}")}))


def point_level() -> dict[str, set[str]]:
    """Files (or folders) in those folders that belong to the point, every route of it, not to one route."""
    slots, out = route_slots(), {}
    for p in _point_parts():
        if len(p) > 1 and p[0] in slots and "{route}" not in p[1]:
            out.setdefault(p[0], set()).add(p[1])
    return out


def across_layers() -> dict[str, set[str]]:
    """Files of the run's folder itself, in those folders, that compare the layers."""
    slots, out = route_slots(), {}
    for template in file_templates(""):
        p = template.lstrip("/").split("/")
        if len(p) == 2 and p[0] in slots:
            out.setdefault(p[0], set()).add(p[1])
    return out


def route_pages_folder() -> str:
    """The folder of the run's folder that holds the route pages (``report``: ``report/L{layer}/{route}.html``)."""
    return TEMPLATES["route_page"].split("/")[0]


__all__ = ["CONDITIONS", "FIGURES", "FIGURE_EXTS", "FIG_NAMES", "FOLDERS", "LOG_DIR", "POINT", "RESULTS",
           "ROUTE_TABLES", "RUN_DIR", "RUN_LOGS", "SPAN", "SPAN_CONDITIONS", "SPAN_ROUTE_TABLES", "STATS", "TEMPLATES",
           "across_layers", "fields", "figure_files", "file_templates", "fill", "for_run", "in_point", "log_roots",
           "point_level", "route_pages_folder", "route_slots", "run_log"]
