"""Loading, validating and hashing the run configuration.

The JSON schema in ``config/schema/config.schema.yaml`` is the single source of truth for
keys, types and defaults. ``validate_config`` fills defaults in place and turns the first
schema violation into a one-line ``CausalKLError`` naming the file, the key and the fix.
"""

from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import json
from pathlib import Path
from typing import Any

from causal_kl.errors import CausalKLError
from causal_kl.hooks import HOOKS, RESID_POST, Point, parse_point

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = ROOT / "config" / "schema" / "config.schema.yaml"
DEFAULT_CONFIG = Path("config") / "config.yaml"
"""The config a run uses when no ``--configfile`` is given (the demo), relative to the workflow directory."""

PRODUCTION = {
    "corpus.name": "openbmb/Ultra-FineWeb",
    "corpus.split": "en",
    "corpus.rows": [100000, 100200],
    "model.path": "google/gemma-3-27b-it",
    "model.layer": 41,
    "seed": 42,
}
"""The reference write-up's configuration; a run matching it shows the published numbers."""


def load_schema(path: str | Path = SCHEMA_PATH) -> dict:
    with open(path) as fh:
        import yaml

        return yaml.safe_load(fh)


def _with_defaults(validator_class):
    import jsonschema

    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                if "default" in sub and prop not in instance:
                    instance[prop] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


@functools.cache
def _validator():
    """The schema validator that fills in defaults (built at first use: a model job's own process, which only reads
    the config's hash, imports neither jsonschema nor yaml)."""
    import jsonschema

    return _with_defaults(jsonschema.Draft202012Validator)


def validate_config(config: dict, source: str | Path = "config", schema: dict | None = None) -> dict:
    """Validate ``config`` against the schema, filling defaults in place; return it.

    Raises CausalKLError (one line: file, key, fix) on the first violation.
    """
    schema = schema or load_schema()
    # defaults of nested objects are filled on a second pass once their parents exist
    for _ in range(2):
        # at one key, a named missing companion (dependentRequired) says more than "not one of the alternatives" (oneOf)
        errors = sorted(_validator()(schema).iter_errors(config),
                        key=lambda e: (len(e.path), list(e.path), e.validator == "oneOf"))
        if not errors:
            continue
        raise _config_error(errors[0], source, schema)
    return config


def _config_error(err: "jsonschema.ValidationError", source: str | Path, schema: dict) -> CausalKLError:
    key = ".".join(str(p) for p in err.absolute_path) or "(top level)"
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(allowed)) if isinstance(err.instance, dict) else []
        bad = extra[0] if extra else "?"
        full = f"{key}.{bad}" if key != "(top level)" else bad
        close = difflib.get_close_matches(bad, allowed, n=1)
        fix = f"did you mean '{close[0]}'? " if close else ""
        fix += f"allowed keys here: {', '.join(allowed)}" if allowed else "remove the key"
        return CausalKLError(source, full, f"unknown key '{bad}'", fix)
    if err.validator == "required":
        missing = err.message.split("'")[1] if "'" in err.message else err.message
        full = f"{key}.{missing}" if key != "(top level)" else missing
        return CausalKLError(source, full, "required key is missing", f"add '{missing}' to the config")
    if err.validator == "uniqueItems":
        seen, dup = set(), None
        for x in err.instance:
            if x in seen:
                dup = x
                break
            seen.add(x)
        return CausalKLError(source, key, f"{dup!r} is listed twice", "list each value once")
    if err.validator in ("type", "enum"):
        expect = err.validator_value
        want = f"one of {expect}" if err.validator == "enum" else f"a value of type {expect}"
        return CausalKLError(source, key, f"got {err.instance!r}", f"set it to {want}")
    if err.validator == "oneOf" and all("title" in s and "required" in s for s in err.validator_value):
        # alternatives of keys (an sae route's path / release + sae_id / repo + folder): say which are given
        given = set(err.instance) if isinstance(err.instance, dict) else set()
        titles = [s["title"] for s in err.validator_value]
        matched = [s["title"] for s in err.validator_value if set(s["required"]) <= given]
        named = sorted(given & {k for s in err.validator_value for k in s["required"]})
        problem = (f"gives {' and '.join(matched)}" if matched else
                   f"gives {', '.join(named) if named else 'none of them'}")
        return CausalKLError(source, key, f"names its SAE by exactly one of {', '.join(titles)}; it {problem}",
                             f"give exactly one of {', '.join(titles)}")
    if err.validator == "oneOf" and all("title" in s for s in err.validator_value):
        # alternative forms of one value (model_server: a boolean or {keep_s: N}): name each form
        return CausalKLError(source, key, f"got {err.instance!r}",
                             f"set it to {' or '.join(s['title'] for s in err.validator_value)}")
    if err.validator == "dependentRequired":
        missing, needed_by = (err.message.split("'") + ["?", "?", "?", "?"])[1:4:2]
        full = f"{key}.{missing}" if key != "(top level)" else missing
        return CausalKLError(source, full, f"required with '{needed_by}'", f"add '{missing}', or remove '{needed_by}'")
    if err.validator == "pattern" and err.schema.get("description"):
        return CausalKLError(source, key, f"got {err.instance!r}", f"set it to {err.schema['description']}")
    return CausalKLError(source, key, err.message, f"see config/schema/config.schema.yaml for '{key}'")


def read_yaml(path: str | Path) -> dict:
    """A YAML config file as a dict; a missing file or a syntax error is one line with its line and column."""
    path = Path(path)
    if not path.exists():
        raise CausalKLError(path, None, "config file not found", "pass an existing YAML file with --configfile")
    import yaml

    try:
        obj = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "?"
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise CausalKLError(path, where, f"not valid YAML ({problem})", "fix the YAML syntax at that line") from e
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise CausalKLError(path, "(top level)", f"a config is a mapping of keys, got a {type(obj).__name__}",
                            "write the config as `key: value` lines (see config/config.yaml)")
    return obj


def load_config(path: str | Path, overrides: dict | None = None) -> dict:
    """Read a YAML config, apply ``overrides`` (deep-merged, as ``--config`` does) and validate it."""
    config = read_yaml(path)
    if overrides:
        config = deep_merge(config, overrides)
    return validate_config(config, path)


def resolve_config(config: dict, configfiles: list[str | Path], overrides: dict | None,
                   default: str | Path = DEFAULT_CONFIG) -> str:
    """The config a run uses, in place in ``config``; returns where it came from (for error messages).

    With ``--configfile`` the run's config is that file alone (Snakemake has loaded it and applied
    ``--config`` on top): nothing of the default config leaks in. Without, it is ``config/config.yaml``
    (the demo) with ``--config KEY=VALUE`` overrides on top.
    """
    if configfiles:
        return ", ".join(_shown(c) for c in configfiles)
    merged = deep_merge(read_yaml(default), overrides or {})
    config.clear()
    config.update(merged)
    return str(default)


def _shown(path: str | Path) -> str:
    """A path as the user typed it: relative to the working directory when it lies below it."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


NOT_IDENTITY = ("cluster",)
"""Config blocks that say how a run is executed, not what it computes: left out of the config hash and the run record."""


def run_identity(config: dict) -> dict:
    """The config without the blocks of ``NOT_IDENTITY`` (what the config hash and ``run.json`` describe).

    ``model_server`` counts only as on/off: ``{keep_s: ...}`` (how long a server outlives the invocation) is how
    a run is executed, so it reads as ``true`` here and a run's hash is the same with or without it."""
    out = {k: v for k, v in config.items() if k not in NOT_IDENTITY}
    if isinstance(out.get("model_server"), dict):
        out["model_server"] = True
    return out


def model_server_keep_s(config: dict) -> float:
    """Seconds a model server outlives its invocation, idle, for the run's next invocation to adopt (0: it does not)."""
    block = config.get("model_server", True)
    return float(block.get("keep_s", 0)) if isinstance(block, dict) else 0.0


def _key_order(key: Any) -> tuple:
    """Sort order of a mapping's keys: numbers and strings of digits by value (layers "3" before "16"), then the
    other keys by their text."""
    text = str(key)
    if isinstance(key, (int, float)) and not isinstance(key, bool):
        return (0, key, text)
    if isinstance(key, str) and text.isascii() and text.isdecimal():
        return (0, int(text), text)
    return (1, 0, text)


def canonical(value: Any) -> Any:
    """``value`` with every mapping's keys in sorted order, recursively (lists and tuples keep their order; a set
    becomes a sorted list).

    A rule's params are compared by Snakemake as the ``repr`` of each value (``snakemake/persistence``:
    ``_serialize_param``, ``params_changed``), and a dict's ``repr`` follows its insertion order: the same config
    read in another key order (another entry point, a reformatted file) would read as "Params have changed".
    Every dict-valued param is built from a canonical config or passed through this.
    """
    if isinstance(value, dict):
        return {k: canonical(value[k]) for k in sorted(value, key=_key_order)}
    if isinstance(value, list):
        return [canonical(v) for v in value]
    if isinstance(value, tuple):
        return tuple(canonical(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return sorted((canonical(v) for v in value), key=_key_order)
    return value


def config_hash(config: dict) -> str:
    """A short, stable hash of the resolved config (key order does not matter; execution settings left out)."""
    canon = json.dumps(run_identity(config), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def get(config: dict, dotted: str, default: Any = None) -> Any:
    cur: Any = config
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return default
        cur = cur[part]
    return cur


def run_layers(config: dict) -> list[int]:
    """The run's layers, ascending: ``model.layer`` as one integer or a list (a sweep)."""
    layer = config["model"]["layer"]
    return sorted(int(x) for x in (layer if isinstance(layer, list) else [layer]))


def route_layers(config: dict, route: str) -> list[int]:
    """The layers a route reconstructs: its ``layer`` (one or a list), else every layer of the run."""
    pinned = config["routes"][route].get("layer")
    if pinned is None:
        return run_layers(config)
    return sorted(int(x) for x in (pinned if isinstance(pinned, list) else [pinned]))


def route_hook(config: dict, route: str) -> str:
    """The hook a route splices at: its ``hook`` key (default ``resid_post``, the block's output). An ``sae`` route's
    hooks are read from its SAE's files when the workflow is parsed (``checks.check_run``) and written into the config
    as ``hook`` / ``hook_in`` (``set_route_hooks``), so this is the one place a route's hook is read."""
    return config["routes"][route].get("hook") or RESID_POST


def route_hook_in(config: dict, route: str) -> str:
    """The hook a route reads its input at: a transcoder's ``hook_in`` (e.g. ``mlp_in`` for an ``mlp_out`` transcoder),
    else the hook it splices at."""
    return config["routes"][route].get("hook_in") or route_hook(config, route)


def set_route_hooks(config: dict, hooks: dict[str, tuple[str, str]]) -> None:
    """Write the hooks read from each ``sae`` route's files (``{route: (hook_in, hook)}``) into the config: ``hook``
    where it is not the residual stream, ``hook_in`` where a transcoder reads another hook. A residual-stream route
    gets no key, so its entry (and the run's config hash) reads as before."""
    for route, (hook_in, hook) in hooks.items():
        entry = config["routes"][route]
        if hook != RESID_POST:
            entry["hook"] = hook
        if hook_in != hook:
            entry["hook_in"] = hook_in


def route_points(config: dict, route: str) -> list[Point]:
    """The points a route reconstructs and is patched at: (layer, its hook) for each of its layers."""
    hook = route_hook(config, route)
    return [Point(layer, hook) for layer in route_layers(config, route)]


def route_gold_points(config: dict, route: str) -> list[Point]:
    """The points whose golds a route reads: its own points, and a transcoder's input points (e.g. (L, mlp_in) beside
    (L, mlp_out): gold-only points, extracted but never spliced at)."""
    hook_in = route_hook_in(config, route)
    extra = [Point(layer, hook_in) for layer in route_layers(config, route)] if hook_in != route_hook(config, route) else []
    return route_points(config, route) + extra


def _point_order(point: Point) -> tuple[int, int]:
    return (point.layer, HOOKS.index(point.hook))


def run_points(config: dict) -> list[Point]:
    """The run's points, by layer then hook (resid_post first): (L, resid_post) for every layer of ``model.layer``,
    and (L, hook) for every route and each of its layers. Each has its own golds, conditions and floors, shared by
    every route at it; a residual-stream run's points are its layers."""
    points = {Point(layer) for layer in run_layers(config)}
    for route in config.get("routes") or {}:
        points.update(route_points(config, route))
    return sorted(points, key=_point_order)


def gold_points(config: dict) -> list[Point]:
    """Every point whose golds the run extracts: the run's points and the gold-only points routes read."""
    points = set(run_points(config))
    for route in config.get("routes") or {}:
        points.update(route_gold_points(config, route))
    return sorted(points, key=_point_order)


def routes_at(config: dict, point: Point | int | str) -> list[str]:
    """The routes of the run at ``point`` (a layer alone: its resid_post point), in name order."""
    point = parse_point(point)
    return [r for r in sorted(config.get("routes") or {}) if point in route_points(config, r)]


def run_spans(config: dict) -> list[int]:
    """The span lengths the run patches, ascending (1, the single-site splice, always among them)."""
    return sorted(int(k) for k in config["patch"]["spans"])


def route_spans(config: dict, route: str) -> list[int]:
    """The spans a route is patched at: its ``spans`` (a subset of ``patch.spans``), else every span of the run."""
    own = config["routes"][route].get("spans")
    return run_spans(config) if own is None else sorted(int(k) for k in own)


def layer_path(template: str, layer: Point | int | str) -> str:
    """A configured path with ``{layer}`` filled in (an SAE suite, per-layer files, per-layer stored golds): a
    point's layer (a point name such as ``"3.mlp_out"`` fills in ``3``)."""
    return template.replace("{layer}", str(parse_point(layer).layer))


def is_production(config: dict) -> bool:
    """True when the run is the reference write-up's configuration."""
    return all(get(config, k) == v for k, v in PRODUCTION.items())


def show_reference(config: dict) -> bool:
    mode = get(config, "analysis.reference", "auto")
    return mode == "always" or (mode == "auto" and is_production(config))


def run_record(config: dict) -> dict:
    """The content of ``results/{run}/run.json``."""
    from causal_kl.io import code_version

    return {
        "run": config["run"],
        "config": config,
        "config_hash": config_hash(config),
        "model": config["model"]["path"],
        "layer": config["model"]["layer"],
        "layers": run_layers(config),
        "points": [p.name for p in run_points(config)],
        "spans": run_spans(config),
        "code_version": code_version(),
        "production": is_production(config),
    }
