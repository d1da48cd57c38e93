"""Checks that need only the config and the files it names, run when the workflow is parsed (before any job).

``check_run`` is what ``rules/common.smk`` runs on every parse and what ``causal-kl validate`` runs on
the same config: the model's ``config.json`` (a causal LM of a family the engine patches, the layer in
range), the device, the corpus file (its column and rows), stored golds and route files, training rows
disjoint from the eval rows, the demo's own paths. Each problem is the one-line ``file: field: problem.
Fix: ...`` error. No weights are read and neither torch nor transformers is imported, so a parse costs
milliseconds (except for a ``model.attn_implementation`` other than ``auto``: checking it against what
transformers offers for the model's class imports transformers; a hub ``model.path`` not in the Hugging Face cache,
where jobs run here, costs one request to the hub to see that it answers).

``check_configfiles`` runs earlier still, from ``profiles/default`` (the workflow profile Snakemake reads before it
loads any ``--configfile``); ``check_shard_targets`` and ``setting_source`` serve the Snakefile's other checks.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from causal_kl import families, paths
from causal_kl.demo_paths import DEMO_PATHS, made_by_workflow
from causal_kl.errors import CausalKLError
from causal_kl.gpu import visible_gpus
from causal_kl.hooks import RESID_POST

CAUSAL_LM_SUFFIXES = ("ForCausalLM", "ForConditionalGeneration", "LMHeadModel")
"""config.json ``architectures`` a causal LM's checkpoint names (the multimodal Gemma-3 wrapper included)."""


def looks_local(path: str) -> bool:
    """A model path meant as a local folder rather than a hub id ``org/name``.

    ``org/name`` is a hub id unless it exists here or its first part is a local folder (a typo in a
    local path must not be sent to the hub).
    """
    if path.startswith(("/", ".", "~")) or path.count("/") != 1 or Path(path).exists():
        return True
    return Path(path.split("/")[0]).is_dir()


def read_model_config(path: str | Path, source: str = "config") -> dict | None:
    """A local model folder's ``config.json`` (None for a hub id); missing folders and files are errors."""
    path = str(path)
    if not looks_local(path):
        return None
    p = Path(path).expanduser()
    if not p.exists():
        raise CausalKLError(source, "model.path", f"model folder '{path}' does not exist",
                            "point model.path at a save_pretrained folder (config.json + weights) or a hub id org/name")
    cfg = p / "config.json"
    if not cfg.exists():
        raise CausalKLError(p, "config.json", "not a Hugging Face model directory",
                            "point model.path at a folder written by save_pretrained (config.json + weights)")
    try:
        return json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise CausalKLError(cfg, None, f"not valid JSON ({e.msg}, line {e.lineno})", "re-save the model with save_pretrained") from e


def text_config(model_config: dict) -> dict:
    """The text decoder's part of a model config (``text_config`` of a multimodal wrapper)."""
    return model_config.get("text_config") or model_config


OFFLINE_VALUES = ("1", "true", "yes", "on")
"""Values of ``HF_HUB_OFFLINE`` that switch the hub off (as huggingface_hub reads it)."""


def hub_model_cached(repo_id: str) -> bool:
    """Whether a hub model's ``config.json`` is in the Hugging Face cache (``sae_hub.hub_cache_dir``), as
    ``from_pretrained`` looks it up offline (``main``)."""
    from huggingface_hub import try_to_load_from_cache

    from causal_kl.sae_hub import hub_cache_dir

    try:
        hit = try_to_load_from_cache(repo_id, "config.json", cache_dir=str(hub_cache_dir()))
    except Exception:  # noqa: BLE001 - an id huggingface_hub refuses (bad characters): not cached
        return False
    return isinstance(hit, str)


def hub_unreachable(repo_id: str, timeout: float = 5.0) -> str | None:
    """Why the hub cannot be reached from here (one request to its model API, no retries), or None when it answers
    (any HTTP status: a missing or gated repo is for the download to say)."""
    import urllib.error
    import urllib.request

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/api/models/{repo_id}", method="HEAD"), timeout=timeout)
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        return f"{endpoint}: {' '.join(str(reason).split())[:120]}"
    return None


def check_hub_id(path: str, source: str = "config") -> None:
    """A hub id the jobs load here is in the Hugging Face cache, or the hub can download it: not cached with the hub
    off (``HF_HUB_OFFLINE``) or unreachable is one line with the ``hf download`` command (as a named SAE's is), not a
    sites job that fails after minutes of HTTP retries."""
    if hub_model_cached(path):
        return
    from causal_kl.sae_hub import download_command, hub_cache_dir

    if os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in OFFLINE_VALUES:
        why = "the hub is off (HF_HUB_OFFLINE=1)"
    else:
        reason = hub_unreachable(path)
        if reason is None:
            return  # the first job downloads it
        why = f"the hub cannot be reached ({reason})"
    raise CausalKLError(source, "model.path", f"'{path}' is a hub id that is not in the Hugging Face cache "
                        f"({hub_cache_dir()}) and {why}",
                        f"download it into the cache once where the hub is reachable: {download_command(path, '')} "
                        "(or point model.path at a local save_pretrained folder)")


def check_model(path: str | Path, layer: int | list[int], source: str = "config", reach_hub: bool = True,
                attn_implementation: str = families.AUTO) -> dict | None:
    """A local model folder is a causal LM of a family the engine patches (``causal_kl.families``) whose
    decoder has block ``layer`` (each of a list), and transformers offers ``attn_implementation`` for its
    class; returns its config.json.

    Where jobs run here (``reach_hub``), a hub id must be cached or the hub reachable (``check_hub_id``) and the
    attention implementation must run on this machine (``check_attn_available``).
    """
    cfg = read_model_config(path, source)
    if cfg is None:
        if reach_hub:
            check_hub_id(str(path), source)
            check_attn_implementation(None, attn_implementation, source, local_exec=True)
        return None
    cfg_path = Path(path) / "config.json"
    archs = cfg.get("architectures") or []
    if archs and not any(a.endswith(CAUSAL_LM_SUFFIXES) for a in archs):
        raise CausalKLError(cfg_path, "architectures", f"{archs[0]} ('{cfg.get('model_type')}') is not a causal language model",
                            f"point model.path at a decoder-only causal LM ({families.supported()})")
    families.check_family(cfg, cfg_path, str(path))
    check_attn_implementation(cfg, attn_implementation, source, local_exec=reach_hub)
    n = text_config(cfg).get("num_hidden_layers")
    for one in layer if isinstance(layer, list) else [layer]:
        if n is not None and not 0 <= int(one) < int(n):
            raise CausalKLError(source, "model.layer", f"layer {one} is out of range for {path} ({n} decoder blocks, 0..{int(n) - 1})",
                                f"set model.layer to block indices below {n}")
    return cfg


def check_attn_implementation(model_config: dict | None, requested: str, source: str = "config",
                              local_exec: bool = False) -> None:
    """``model.attn_implementation`` is one transformers offers for the model's class (``auto`` always is:
    sdpa where offered, else eager), and, where jobs run here (``local_exec``), one this machine can run (flash
    attention: its package and a CUDA GPU). Imports transformers, so only for a value other than ``auto``."""
    if requested in (None, families.AUTO):
        return
    model_class = families.causal_lm_class(model_config) if model_config is not None else None
    if model_class is not None:
        families.choose_attn_implementation(model_class, requested, source)
    if local_exec:
        check_attn_available(requested, source)


FLASH_PACKAGES = {"flash_attention_2": ("flash_attn", "flash-attn"), "flash_attention_3": ("flash_attn_interface",
                                                                                           "flash-attn 3")}
"""The module each flash attention is imported from and the package that installs it."""


def check_attn_available(requested: str, source: str = "config") -> None:
    """This machine can run a flash attention ``requested``, as transformers decides when it loads the model (in the
    first model job): its package usable (``is_flash_attn_*_available``: installed and a CUDA GPU), else the hub's
    kernels (the ``kernels`` package) on a GPU."""
    if requested not in FLASH_PACKAGES:
        return
    import importlib.util

    from transformers import utils as tu

    usable = tu.is_flash_attn_2_available if requested == "flash_attention_2" else tu.is_flash_attn_3_available
    gpu = bool(visible_gpus())
    if usable() or (gpu and tu.is_kernels_available()):
        return
    module, package = FLASH_PACKAGES[requested]
    missing = [] if importlib.util.find_spec(module) is not None else [f"the {package} package is not installed"]
    missing += [] if gpu else ["this machine has no visible GPU"]
    raise CausalKLError(source, "model.attn_implementation",
                        f"{requested} cannot run here: {' and '.join(missing) or 'transformers cannot use it'}",
                        f"set model.attn_implementation: auto (sdpa where offered, else eager), or run where {package} "
                        "is installed and a CUDA GPU is visible")


def check_device(device: str, source: str = "config") -> None:
    if device == "cuda" and not visible_gpus():
        raise CausalKLError(source, "device", "cuda was asked for but this machine has no visible GPU",
                            "run on a GPU node (or through a cluster profile), or set device: auto or cpu")


def check_corpus(corpus: dict, built_by_demo: bool, source: str = "config") -> None:
    """A local corpus file exists, has the column and holds the rows (read from parquet metadata only)."""
    path = corpus.get("path")
    if not path or built_by_demo:
        return
    p = Path(path)
    if not p.exists():
        raise CausalKLError(source, "corpus.path", f"corpus file '{path}' does not exist",
                            "point corpus.path at a local parquet file or folder, or remove it to stream corpus.name from the hub")
    import pyarrow.parquet as pq

    files = sorted(p.glob("*.parquet")) if p.is_dir() else [p]
    if not files:
        raise CausalKLError(p, "corpus.path", "folder holds no .parquet file", "point corpus.path at parquet files")
    try:
        metas = [pq.read_metadata(f) for f in files]
    except Exception as e:  # pyarrow raises several types for a file that is not parquet
        raise CausalKLError(path, "corpus.path", f"not a readable parquet file ({str(e).splitlines()[0]})",
                            "point corpus.path at parquet files") from e
    names = metas[0].schema.to_arrow_schema().names
    if corpus["column"] not in names:
        raise CausalKLError(path, "corpus.column", f"column '{corpus['column']}' not in the corpus (has {sorted(names)})",
                            f"set corpus.column to one of {sorted(names)}")
    n_rows = sum(m.num_rows for m in metas)
    start, stop = corpus["rows"]
    if stop <= start:
        raise CausalKLError(source, "corpus.rows", f"empty row range [{start}, {stop})", "give rows as [start, stop) with stop > start")
    if n_rows == 0:
        raise CausalKLError(path, "corpus.path", "the corpus holds no rows",
                            f"point corpus.path at a corpus with one document per row (its text in column "
                            f"'{corpus['column']}')")
    if stop > n_rows:
        raise CausalKLError(path, "corpus.rows", f"rows [{start}, {stop}) run past the end of the corpus ({n_rows} rows)",
                            f"set corpus.rows within [0, {n_rows}]")
    check_corpus_text(files, metas, corpus["column"], start, stop, path)


def check_corpus_text(files: list[Path], metas: list, column: str, start: int, stop: int, shown: str) -> None:
    """Rows ``[start, stop)`` of the corpus hold some text in ``column``: when every one is empty (or null), no site can
    be sampled. Read from the row groups' statistics where they show no empty or null value (no data read), else
    from the column of the row groups that hold those rows only."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    kind = metas[0].schema.to_arrow_schema().field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
        raise CausalKLError(shown, "corpus.column", f"column '{column}' holds {kind}, not text",
                            "set corpus.column to the column that holds the documents' text")
    offset, reads = 0, []
    for f, meta in zip(files, metas):
        index = meta.schema.to_arrow_schema().get_field_index(column)
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            lo, hi = offset, offset + group.num_rows
            offset = hi
            if hi <= start or lo >= stop:
                continue
            stats = group.column(index).statistics if index >= 0 else None
            if stats is not None and stats.has_min_max and stats.has_null_count and stats.null_count == 0 \
                    and isinstance(stats.min, (str, bytes)) and len(stats.min.strip()) > 0:
                return  # every value of this row group is non-empty text
            reads.append((f, g, max(start - lo, 0), min(stop, hi) - lo))
    for f, g, a, b in reads:
        values = pq.ParquetFile(f).read_row_group(g, columns=[column]).column(column).slice(a, b - a).to_pylist()
        if any(isinstance(v, (str, bytes)) and v.strip() for v in values):
            return
    raise CausalKLError(shown, "corpus.column", f"column '{column}' is empty in every row of corpus.rows [{start}, {stop}) "
                        "(no text to sample sites from)",
                        "set corpus.column to the column that holds the documents' text, or corpus.rows to rows that have text")


def _must_exist(path: str, source: str, field: str, what: str, fix: str) -> None:
    if not Path(path).exists():
        raise CausalKLError(source, field, f"{what} '{path}' does not exist", fix)


def check_routes(routes: dict, eval_rows: list[int], layers: list[int], source: str = "config",
                 d_model: int | None = None, built: set[str] = frozenset(), model_config: dict | None = None,
                 model: str = "the model") -> dict[str, tuple[str, str]]:
    """Every route reconstructs layers of the run; every file it names exists (per layer where the path
    has ``{layer}``); training rows are disjoint from the eval rows; an SAE fits the model and its layer.
    ``built``: paths the workflow itself makes (the demo's SAEs), not checked here.

    Returns, per ``sae`` route whose files were read against the model's ``config.json`` (``model_config``), the
    hooks it reads and splices at, ``(hook_in, hook)``, from the SAE's own files (``routes.sae.route_points``): the
    same at every layer of a suite, else one line. Without a config.json (the demo's model is built by the run) an
    SAE is checked at the route's ``hook`` (default the residual stream)."""
    from causal_kl.config import layer_path
    from causal_kl.routes.base import check_train_rows
    from causal_kl.routes.file import input_files

    resolved: dict[str, tuple[str, str]] = {}
    for name, route in routes.items():
        where = f"routes.{name}"
        kind = route["kind"]
        pinned = route.get("layer")
        mine = layers if pinned is None else sorted(pinned if isinstance(pinned, list) else [pinned])
        for one in mine:
            if one not in layers:
                raise CausalKLError(source, f"{where}.layer", f"layer {one} is not a layer of the run (model.layer: {layers})",
                                    f"add {one} to model.layer, or pin the route to one of {layers}")
        if kind == "file":
            for one in mine:
                for f in input_files({**route, "path": layer_path(route["path"], one)}):
                    _must_exist(f, source, f"{where}.path", "reconstruction file", "point the route at an existing file")
        if kind == "sae":
            from causal_kl.routes.sae import check_sae_config, route_points

            seen: dict[tuple[str, str], int] = {}
            for one in mine:  # (a named SAE, release or repo, is read from the hub cache: never built here)
                if "path" not in route or os.path.normpath(layer_path(route["path"], one)) not in built:
                    if model_config is None:
                        check_sae_config(route, name, one, d_model, source)
                        continue
                    p_in, p_out = route_points(route, name, one, model_config, source, model=model,
                                               model_file=f"{model}/config.json")
                    seen.setdefault((p_in.hook, p_out.hook), one)
            if len(seen) > 1:
                (a, la), (b, lb) = list(seen.items())[:2]
                raise CausalKLError(source, f"{where}.path", f"the suite's SAEs sit at different hooks: {a[1]} at layer {la}, "
                                    f"{b[1]} at layer {lb} (read from their files)", "make one route per hook")
            if seen:
                resolved[name] = next(iter(seen))
        if kind == "nla_ar":
            _must_exist(route["explanations"], source, f"{where}.explanations", "explanations file",
                        "point the route at an existing parquet of explanations")
        for key in ("checkpoint", "ar_checkpoint"):
            if key in route and looks_local(route[key]):
                _must_exist(route[key], source, f"{where}.{key}", "checkpoint folder",
                            "point the route at a local checkpoint folder or a hub id org/name")
        if "train_rows" in route:
            check_train_rows(route["train_rows"], eval_rows, f"{source} {where}")
    return resolved


RESIDUAL_ONLY_KINDS = ("text_channel", "nla_ar", "nla_av")
"""Route kinds whose reconstruction reads a vector as the residual stream: refused at a hook inside a block."""


def check_route_hooks(routes: dict, model_config: dict | None, model: str, source: str = "config") -> None:
    """Every route's ``hook`` is one the model's blocks have (``families.check_hook`` against its config.json): one
    line naming the hooks it has. Nothing to check without a config.json (the demo's model is built by the run, a hub
    id not cached here: the job's ``LoadedModel.hook_module`` says it then). Routes that read a vector as the residual
    stream (a text channel's logit lens, an NLA's verbaliser) sit at the residual stream only."""
    for name, route in routes.items():
        if route["kind"] in RESIDUAL_ONLY_KINDS and route.get("hook", RESID_POST) != RESID_POST:
            raise CausalKLError(source, f"routes.{name}.hook",
                                f"a {route['kind']} route reads its vectors as the residual stream (the logit lens, an "
                                f"NLA's verbaliser), not as {route['hook']}",
                                f"remove routes.{name}.hook (or use a pca, file or sae route at {route['hook']})")
    if model_config is None:
        return
    family = families.check_family(model_config, f"{model}/config.json", model)
    for name, route in routes.items():
        if route.get("hook"):
            families.check_hook(family, text_config(model_config), route["hook"], source, f"routes.{name}.hook", model)


def check_spans(config: dict, source: str = "config") -> None:
    """``patch.spans`` lists 1 (every route table reads it), and every span can fit a site: a span of k fits a site at
    position p of a document of n tokens when p + k <= n, and sites start at ``sites.min_position`` in documents cut
    at ``sites.max_length`` tokens, so no span longer than their difference fits any site of any corpus. (Which
    spans fit the sites actually sampled is checked once they exist: ``spans.check_spans_fit``.)"""
    from causal_kl.config import run_spans

    spans = run_spans(config)
    if 1 not in spans:
        raise CausalKLError(source, "patch.spans", f"{spans} lacks 1, the single-site splice every route table reads",
                            f"list 1 among the spans, e.g. {sorted({1, *spans})}")
    sites = config["sites"]
    longest = int(sites["max_length"]) - int(sites["min_position"])
    too_long = [k for k in spans if k > longest]
    if too_long:
        raise CausalKLError(source, "patch.spans",
                            f"span {too_long[0]} cannot fit any site: sites start at sites.min_position "
                            f"({sites['min_position']}) in documents cut at sites.max_length ({sites['max_length']}) "
                            f"tokens, so a span covers at most {longest} positions",
                            f"list spans of at most {longest}, or raise sites.max_length")


def check_route_spans(routes: dict, spans: list[int], source: str = "config") -> None:
    """A route's own ``spans`` are spans the run patches, 1 (the single-site splice its tables read) among them."""
    for name, route in routes.items():
        own = route.get("spans")
        if own is None:
            continue
        where = f"routes.{name}.spans"
        extra = sorted(set(own) - set(spans))
        if extra:
            raise CausalKLError(source, where, f"{extra} not among patch.spans {spans}",
                                f"list only spans of patch.spans, or add {extra} to patch.spans")
        if 1 not in own:
            raise CausalKLError(source, where, f"{sorted(own)} lacks 1, the single-site splice every route table reads",
                                f"list 1 among the route's spans, e.g. {sorted({1, *own})}")


def check_demo(config: dict, source: str = "config") -> None:
    """The demo builds its corpus and model only at its own paths, so it never writes over a user's files."""
    for key, want in DEMO_PATHS.items():
        got = config[key].get("path")
        if got != want:
            raise CausalKLError(source, f"{key}.path", f"the demo builds its {key} at {want}, not at {got}",
                                f"remove the demo block to use your own {key}, or set {key}.path: {want}")


def profile_value(profile: str | None, key: str) -> Any:
    """What a Snakemake profile sets for ``key`` (profile given as a folder, or a name Snakemake looks up); None if
    it sets nothing or cannot be read."""
    import yaml

    if not profile:
        return None
    candidates = [Path(profile), Path("profiles") / profile,
                  Path(os.environ.get("XDG_CONFIG_HOME", "~/.config")).expanduser() / "snakemake" / profile]
    for folder in candidates:
        for name in ("config.v9+.yaml", "config.v8+.yaml", "config.yaml"):
            f = folder / name
            if f.is_file():
                try:
                    return (yaml.safe_load(f.read_text()) or {}).get(key)
                except yaml.YAMLError:
                    return None
    return None


def _command_line(argv: list[str]) -> Any:
    """What a Snakemake command line says about where and how it runs, as the parse-time checks read it (Snakemake
    applies these only after the Snakefile is parsed): ``dry_run``, ``executor`` (``-e``, else the profile's
    ``executor:``) and ``groups`` (``--groups``, else the profile's ``groups:``)."""
    import argparse

    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("-n", "--dry-run", "--dryrun", action="store_true", dest="dry_run")
    ap.add_argument("-e", "--executor", default=None)
    ap.add_argument("--groups", nargs="+", default=None)
    ap.add_argument("--profile", default=os.environ.get("SNAKEMAKE_PROFILE"))
    ap.add_argument("--config", "-C", nargs="*", default=None)
    ap.add_argument("--configfile", "--configfiles", nargs="+", default=[])
    args, _ = ap.parse_known_args(argv)
    args.executor = args.executor or profile_value(args.profile, "executor")
    args.groups = args.groups if args.groups is not None else profile_value(args.profile, "groups")
    return args


def setting_source(argv: list[str], key: str, configfile: str) -> str:
    """Where this invocation's value of config ``key`` (dotted) was given: ``--config`` on the command line, the profile's
    ``config:`` (which a command-line ``--config`` replaces whole, as Snakemake reads it), else ``configfile``."""
    from snakemake.cli import parse_config

    def sets(values: Any) -> bool:
        for part in key.split("."):
            if not isinstance(values, dict) or part not in values:
                return False
            values = values[part]
        return True

    args = _command_line(argv)
    if args.config is not None:
        try:
            given = parse_config(args.config)
        except (ValueError, AssertionError):
            given = {}
        return "--config" if sets(given) else configfile
    profile = profile_value(args.profile, "config")
    return f"--profile {args.profile} (its config:)" if sets(profile) else configfile


CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
"""What a config file's name ends with; a ``--configfile`` word that does not (or names a path under results/) is a
target."""


def check_configfiles(argv: list[str]) -> None:
    """The ``--configfile`` files of a Snakemake command line, read as Snakemake will read them, before it does (from
    ``profiles/default``, the workflow profile Snakemake reads first): a target written after ``--configfile`` (which
    takes every word after it) is one line saying to name it before, not a FileNotFoundError traceback; a YAML error
    names the file, line and column (``config.read_yaml``), not Snakemake's "not valid JSON or YAML"."""
    from causal_kl.config import read_yaml

    files = [str(f) for f in _command_line(argv).configfile]
    present = [f for f in files if Path(f).is_file()]
    for f in files:
        if Path(f).exists():
            try:  # Snakemake reads a config file as JSON first (JSON with tabs is no YAML)
                json.loads(Path(f).read_text())
            except (ValueError, OSError):
                read_yaml(f)
            continue
        if f.startswith(("results/", "logs/", "resources/")) or not f.endswith(CONFIG_SUFFIXES):
            cfgs = " ".join(present) or "X.yaml"
            raise CausalKLError(f, "--configfile", "this target was read as a config file: --configfile takes every "
                                "word after it", f"name targets before --configfile: snakemake {f} --configfile {cfgs}")
        read_yaml(f)  # the one line of a config file that is not there


def requested_groups(argv: list[str]) -> dict[str, str]:
    """``--groups RULE=GROUP ...`` of this invocation, else what its profile's ``groups:`` says."""
    entries = _command_line(argv).groups
    if isinstance(entries, dict):
        return {str(k): str(v) for k, v in entries.items()}
    out = {}
    for entry in entries or []:
        rule, _, group = str(entry).partition("=")
        out[rule.strip()] = group.strip()
    return out


def runs_jobs_here(argv: list[str]) -> bool:
    """Whether this Snakemake invocation executes jobs on this machine (not a dry run, not a cluster submit).

    At parse time Snakemake has not chosen its executor yet, so this reads its command line (and the
    profile it names): ``-n``/``--dry-run`` plan only; an executor other than ``local`` (or a job step
    inside a cluster allocation, which runs on the node with the GPU) submits elsewhere.
    """
    args = _command_line(argv)
    if args.dry_run:
        return False
    return args.executor in (None, "local") or str(args.executor).endswith("jobstep")


def submits_to_cluster(argv: list[str]) -> bool:
    """Whether this invocation (a run or a dry run) submits its jobs through a cluster executor (``slurm`` ...): the
    one place the model rules' groups mean anything, so the only one that pays for Snakemake's group checks."""
    executor = _command_line(argv).executor
    return executor not in (None, "local") and not str(executor).endswith("jobstep")


ROUTE_SLOTS = paths.route_slots()
"""Folders of ``results/{run}/L{layer}/`` (and of its ``span{k}/``) whose next path component names a route."""
RUN_LEVEL = paths.point_level()
"""Files in those folders that belong to the layer (every route of it), not to one route."""
ACROSS_LAYERS = paths.across_layers()
"""Files of ``results/{run}/`` itself that compare the layers."""
REPORT_PAGES = paths.route_pages_folder()
"""``results/{run}/report/L{layer}/{route}.html``: the page of a route at a layer, beside the main page."""


def check_targets(argv: list[str], results: str, routes_by_layer: dict[int | str, list[str]], spans: list[int]) -> None:
    """A target naming a layer, span or route this run does not have is one line, not Snakemake's 'no rule to produce'.

    ``routes_by_layer``: each point of the run (a layer, or a point name such as ``"3.mlp_out"``: ``L3.mlp_out/``) and
    the routes at it.
    """
    import re

    from causal_kl.hooks import parse_point

    prefix = results.rstrip("/") + "/"
    routes_by_layer = {str(k): v for k, v in routes_by_layer.items()}
    layers = sorted(routes_by_layer, key=lambda name: (parse_point(name).layer, name))
    for target in (a for a in argv if not a.startswith("-") and a.startswith(prefix)):
        parts = target[len(prefix):].split("/")
        page = len(parts) == 3 and parts[0] == REPORT_PAGES and re.fullmatch(_POINT_DIR, parts[1]) is not None
        if page:  # a route's page: checked as the layer's outputs are (report/L3/pca.html as if L3/report/pca.html)
            parts = [parts[1], REPORT_PAGES, parts[2]]
        m = re.fullmatch(_POINT_DIR, parts[0])
        if m is None:
            if len(parts) > 1 and parts[0] in ROUTE_SLOTS and parts[1] not in ACROSS_LAYERS.get(parts[0], set()):
                raise CausalKLError(target, "layer", f"outputs of a layer live under {prefix}L<layer>/ (this run's layers: "
                                    f"{', '.join(map(str, layers))})",
                                    f"ask for {prefix}L{layers[0]}/{'/'.join(parts)}")
            continue
        layer = m.group(1)
        if layer not in routes_by_layer:
            if layer.isdecimal():
                residual = [int(l) for l in layers if l.isdecimal()]
                raise CausalKLError(target, "layer", f"layer {layer} is not a layer of this run (model.layer: {residual})",
                                    "add it to model.layer in the config, or ask for one of the run's layers")
            raise CausalKLError(target, "layer", f"L{layer} is not a point of this run (its points: "
                                f"{', '.join('L' + l for l in layers)})",
                                "give a route that hook (routes.<name>.hook) at that layer, or ask for one of the run's "
                                "points")
        rest = parts[1:]
        if rest == ["patch.parquet"]:
            index = prefix + paths.fill(paths.TEMPLATES["patch_index"], layer=layer)
            files = paths.fill(paths.TEMPLATES["patch"], layer=layer, route="*")
            raise CausalKLError(target, "target", "a layer's patch rows are no longer copied into one file: they are the "
                                f"dataset of its {paths.fill(files, span='{k}').split('/', 1)[1]} files, which {index} "
                                f"lists", f"ask for {index} and read it with causal_kl.io.patch_dataset "
                                f"(or duckdb over {prefix}{paths.fill(files, span='*')})")
        if rest and (s := re.fullmatch(_SPAN_DIR, rest[0])):
            if int(s.group(1)) not in spans:
                raise CausalKLError(target, "span", f"span {s.group(1)} is not a span of this run (patch.spans: {spans})",
                                    "add it to patch.spans in the config, or ask for one of the run's spans")
            rest = rest[1:]
        slots = (*ROUTE_SLOTS, REPORT_PAGES) if page else ROUTE_SLOTS
        if len(rest) < 2 or rest[0] not in slots or rest[1] in RUN_LEVEL.get(rest[0], set()):
            continue
        name = rest[1] if len(rest) > 2 else Path(rest[1]).name.split(".")[0]
        here = routes_by_layer[layer]
        if name not in here:
            others = [str(l) for l, rs in routes_by_layer.items() if name in rs]
            where = f" (it reconstructs layer {', '.join(others)})" if others else ""
            raise CausalKLError(target, "route", f"'{name}' is not a route of layer {layer} of this run{where} "
                                f"(its routes there: {', '.join(here) or 'none'})",
                                "add the route under routes: in the config (or its layer to the route), or ask for one of those")


SHARD_FILE = re.escape(Path(paths.TEMPLATES["site_shard"]).name).replace(re.escape("{shard}"), r"(\d{3,})")
"""One shard's file of a per-shard output (``.../gold/shard_000.parquet``, as every ``*_shard`` template of
``causal_kl.paths`` names it): a target only once the sites exist."""


def check_shard_targets(argv: list[str], results: str) -> None:
    """A target that is one shard's file needs the sampled sites, which say which shards exist (``sites.json``): asked
    for before them it is one line saying what to build first (Snakemake says MissingInputException on the sites
    shard). Once they exist the target is Snakemake's to plan (a config that samples more sites reruns them first)."""
    import re

    prefix = results.rstrip("/") + "/"
    stats = Path(prefix) / paths.TEMPLATES["sites_stats"]
    for target in (a for a in argv if not a.startswith("-") and a.startswith(prefix)):
        m = re.fullmatch(SHARD_FILE, Path(target).name)
        if m is None:
            continue
        whole = f"{Path(target).parent}.parquet" if Path(target).parent.name != paths.TEMPLATES["site_shards"] else str(stats)
        if not stats.exists():
            raise CausalKLError(target, "target", f"a shard's file is planned once the sites are sampled ({stats}, which "
                                "says how many shards the run has, does not exist yet)",
                                f"build the sites first (snakemake {stats}, with the same --configfile), then ask for "
                                f"the shard; or ask for {whole}")


_POINT_DIR = paths.POINT.replace("{layer}", r"(\d+(?:\.[a-z_]+)?)")
"""A point's folder: ``L3`` (resid_post), ``L3.mlp_out``, the point's name captured."""
_SPAN_DIR = paths.SPAN.split("/")[-1].replace("{span}", r"(\d+)")
"""A span's folder inside a point's (``span4``), the span captured."""


def check_run(config: dict, source: str = "config", local_exec: bool = True) -> dict[str, Any]:
    """Every check the config and the files it names allow, before any job; returns what was read.

    ``local_exec`` is False when no job runs here (a dry run, or jobs submitted to a cluster): the
    device is then checked by each job on its own node, not on the submitting one.
    """
    demo = bool(config.get("demo"))
    if demo:
        check_demo(config, source)
    from causal_kl.config import layer_path, run_layers, run_spans

    model = config["model"]
    layers = run_layers(config)
    model_config = None if demo else check_model(model["path"], layers, source, reach_hub=local_exec,
                                                 attn_implementation=model.get("attn_implementation", families.AUTO))
    if demo and local_exec:  # the demo's model is built by the run: what this machine runs is checked all the same
        check_attn_available(model.get("attn_implementation", families.AUTO), source)
    if local_exec:
        check_device(config["device"], source)
    check_corpus(config["corpus"], demo, source)
    check_spans(config, source)
    check_route_spans(config.get("routes") or {}, run_spans(config), source)
    stored = config["gold"].get("stored")
    if stored:
        for one in layers:
            _must_exist(layer_path(stored, one), source, "gold.stored", "stored-gold file",
                        "point gold.stored at an NLA base.parquet, or remove it to use the extracted golds")
    d_model = text_config(model_config).get("hidden_size") if model_config else None
    route_hooks = check_routes(config.get("routes") or {}, config["corpus"]["rows"], layers, source, d_model,
                               made_by_workflow(config), model_config, model["path"])
    check_route_hooks(config.get("routes") or {}, model_config, model["path"], source)
    return {"model_config": model_config, "route_hooks": route_hooks}
