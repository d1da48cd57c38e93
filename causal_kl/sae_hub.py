"""SAEs named as their users name them: a SAELens release + SAE id, or a hub repo + folder, read from the
Hugging Face cache.

An ``sae`` route names its SAE by exactly one of (``config/schema/config.schema.yaml``):

- ``path``: a local folder or file (``causal_kl.routes.sae``; not this module);
- ``release`` + ``sae_id``: a release of SAELens' ``pretrained_saes.yaml``, read from the **installed**
  sae-lens package (never a copy kept here), e.g. ``gemma-scope-2b-pt-res-canonical`` /
  ``layer_{layer}/width_16k/canonical``; the release gives the repo, the folder inside it, the format
  (its ``conversion_func``) and, where it lists one, the ``norm_scaling_factor``;
- ``repo`` + ``folder``: any hub repo and the folder of one SAE in it (SAELens, Gemma Scope or sparsify
  format, told by the files), e.g. ``EleutherAI/sae-llama-3-8b-32x`` / ``layers.{layer}``.

``{layer}`` in ``sae_id`` or ``folder`` is the layer (one entry names a suite), as in ``path``; ``revision``
(a branch, tag or commit; default ``main``) pins one.

**The cache only.** The files are looked up with ``huggingface_hub.try_to_load_from_cache`` in
``HF_HUB_CACHE`` (huggingface_hub's default when unset): nothing is ever downloaded here, whatever
``HF_HUB_OFFLINE`` says, so a parse never starts a multi-GB transfer and a machine without the hub runs
the same. A file that is not in the cache is one line giving the ``hf download`` command that puts it
there. The revision read is the cached snapshot's commit hash (``snapshots/<commit>/``), and the
workflow makes it a param of the rules that read the SAE: when the cache's ``main`` moves to a new
commit, exactly what read the SAE reruns.

**SAELens' own rules, applied as ``SAE.from_pretrained`` does** (sae-lens 6.54, ``saes/sae.py``,
``loading/pretrained_sae_loaders.py``): the release's ``config_overrides`` are applied to ``cfg.json``
on top (a release may change ``normalize_activations`` there); the release's ``norm_scaling_factor``
is folded in only when the SAE's ``cfg.json`` says ``expected_average_only_in`` (SAELens ignores it
otherwise); formats read: ``conversion_func`` null (SAELens' own), ``gemma_2`` (Gemma Scope
``params.npz``), ``gemma_3`` (Gemma Scope 2 ``params.safetensors``), ``sparsify``, ``dictionary_learning_1``,
``qwen_scope``, ``goodfire``, ``deepseek_r1`` (``causal_kl.sae_dictionary``; ``temporal`` is refused with its reason
there), and ``causal_kl.sae_scope``'s (``llama_scope``, ``llama_scope_r1_distill``, ``mwhanna_transcoder``,
``gemma_2_transcoder``, ``connor_rob_hook_z``; the file formats' SAE is one file of the repo's root, found with its
config); cross-layer transcoders and other formats are one line. Releases trained on TransformerLens' model with
``center_writing_weights`` read a mean-centred residual stream the Hugging Face model does not have:
refused, with the reason.

Nothing here imports torch, transformers, safetensors or sae_lens (the YAML is found with
``importlib.util.find_spec``), so the parse-time check stays light; huggingface_hub is imported only
for a named SAE.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from causal_kl.errors import CausalKLError
from causal_kl import sae_format as fmt
from causal_kl import sae_dictionary
from causal_kl import sae_scope  # Llama Scope, mwhanna / Gemma Scope transcoders, hook_z .pt; CLTs refused

NAMED_KEYS = ("release", "repo")
"""The keys that name an SAE on the hub instead of a ``path``."""

CONVERTERS = {None: "saelens", "sparsify": "sparsify", "gemma_2": "gemma_scope", "gemma_3": "gemma_scope",
              **sae_dictionary.CONVERTERS, **sae_scope.CONVERTERS}
"""SAELens' ``conversion_func`` of a release -> the format read here."""

FORMAT_FILES = {
    "saelens": (fmt.SAELENS_CFG, fmt.SAELENS_WEIGHTS),
    "sparsify": (fmt.SPARSIFY_CFG, fmt.SPARSIFY_WEIGHTS),
    "gemma_2": (fmt.GEMMA_SCOPE_NPZ,),
    "gemma_3": (fmt.GEMMA_SCOPE_SAFETENSORS,),
    **sae_dictionary.FORMAT_FILES,
    **sae_scope.FORMAT_FILES,
}
"""The files an SAE of each format needs (Gemma Scope 2's optional ``config.json`` is read when present);
``sae_dictionary.THE_FILE`` (""): the SAE's path in the repo is its one file (Qwen-Scope's ``layer3.sae.pt``)."""

PROBE_FILES = (fmt.SAELENS_WEIGHTS, fmt.SPARSIFY_WEIGHTS, fmt.GEMMA_SCOPE_NPZ, fmt.GEMMA_SCOPE_SAFETENSORS, fmt.SAELENS_CFG,
               sae_dictionary.DL_WEIGHTS, sae_dictionary.THE_FILE,
               sae_scope.LLAMA_SCOPE_CFG)
"""What a ``repo`` + ``folder`` SAE's folder is recognised by, in this order."""


@dataclass(frozen=True)
class HubSAE:
    """A named SAE found in the cache: where it is and what it is."""

    repo_id: str
    folder: str  # inside the repo ("" = its root)
    revision: str  # the commit hash of the cached snapshot
    path: Path  # snapshots/<commit>/<folder>: what causal_kl.sae_format.locate_sae reads
    format: str  # saelens | gemma_scope | sparsify | one of causal_kl.sae_scope.FORMATS
    files: tuple[str, ...]  # the files of the SAE in its folder (FORMAT_FILES)
    norm_scaling_factor: float | None
    config_overrides: dict
    label: str  # how the route named it, for messages and provenance

    def pin(self) -> dict[str, Any]:
        """What the workflow passes to the jobs (they run where sae-lens may be absent): repo, folder, commit,
        format and files, norm scaling factor and config overrides. A param: a new commit reruns what read the SAE."""
        return {"repo": self.repo_id, "folder": self.folder, "revision": self.revision, "format": self.format,
                "files": list(self.files), "norm_scaling_factor": self.norm_scaling_factor,
                "config_overrides": dict(sorted(self.config_overrides.items())), "label": self.label}

    def fingerprint(self) -> str:
        """The cached revision: ``repo@commit/folder`` (+ the norm scaling factor folded in)."""
        f = "" if self.norm_scaling_factor is None else f" norm_scaling_factor={self.norm_scaling_factor!r}"
        return f"{self.repo_id}@{self.revision}/{self.folder}{f}"


def is_named(entry: dict) -> bool:
    """Whether an ``sae`` route names its SAE on the hub (``release`` or ``repo``) instead of by ``path``."""
    return any(entry.get(k) is not None for k in NAMED_KEYS) or "hub" in entry


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache read: ``HF_HUB_CACHE`` as set now, else huggingface_hub's default."""
    env = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if env:
        return Path(env).expanduser()
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def download_command(repo_id: str, folder: str, revision: str | None = None, file: bool = False) -> str:
    """The command that puts ``folder`` of ``repo_id`` into the cache (``hf``: huggingface_hub >= 0.34's CLI,
    the one it installs; ``huggingface-cli`` before); ``file``: ``folder`` is one file (a Qwen-Scope ``layer3.sae.pt``)."""
    from importlib.metadata import version

    try:
        major, minor = (int(x) for x in version("huggingface_hub").split(".")[:2])
        cli = "hf" if (major, minor) >= (0, 34) else "huggingface-cli"
    except Exception:  # noqa: BLE001 - no version: the current CLI
        cli = "hf"
    include = f" {folder}" if file else f' --include "{folder.rstrip("/")}/*"' if folder else ""
    rev = f" --revision {revision}" if revision and revision != "main" else ""
    return f"{cli} download {repo_id}{include}{rev}"


# ------------------------------------------------------------------------------- SAELens' releases
def pretrained_saes_file(source: str = "config", field: str = "release") -> Path:
    """The installed sae-lens package's ``pretrained_saes.yaml`` (found without importing sae_lens, which imports torch)."""
    try:
        spec = importlib.util.find_spec("sae_lens")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(locations[0]) / "pretrained_saes.yaml" if locations else None
    if path is None or not path.exists():
        raise CausalKLError(source, field, "naming an SAE by SAELens release needs SAELens' pretrained_saes.yaml, and "
                            "sae-lens is not installed" if path is None else f"{path} is missing from the sae-lens package",
                            "pip install sae-lens (pip install -e '.[sae]'), or name the SAE by repo + folder instead")
    return path


@functools.lru_cache(maxsize=4)
def _read_releases(path: str, mtime_ns: int) -> dict[str, dict]:
    import yaml

    with open(path) as f:  # ~1 s for its ~40k lines with the C loader; once per process
        return yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def saelens_releases(source: str = "config", field: str = "release") -> dict[str, dict]:
    """SAELens' ``pretrained_saes.yaml`` as installed: release -> ``repo_id``, ``conversion_func``, ``saes``, ..."""
    path = pretrained_saes_file(source, field)
    return _read_releases(str(path), path.stat().st_mtime_ns)


def _saelens_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sae-lens")
    except PackageNotFoundError:
        return "?"


def _suggest(word: str, options: list[str], n: int = 3) -> str:
    close = difflib.get_close_matches(word, options, n=n, cutoff=0.5)
    if close:
        return "did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
    return "e.g. " + ", ".join(f"'{o}'" for o in options[:n])


def release_sae(release: str, sae_id: str, source: str = "config", name: str | None = None) -> dict[str, Any]:
    """One SAE of a SAELens release: ``repo_id``, ``folder``, ``format``, ``norm_scaling_factor`` (None when the
    release lists none), ``config_overrides``; an unknown release or id or a format not read here is one line."""
    where = f"routes.{name}" if name else "route"
    releases = saelens_releases(source, f"{where}.release")
    info = releases.get(release)
    if info is None:
        raise CausalKLError(source, f"{where}.release", f"'{release}' is not a release of SAELens' pretrained_saes.yaml "
                            f"(sae-lens {_saelens_version()}, {len(releases)} releases)",
                            f"{_suggest(release, sorted(releases))} A hub repo that is no release: name it by repo + folder")
    saes = {str(s["id"]): s for s in info.get("saes", [])}
    entry = saes.get(sae_id)
    if entry is None:
        raise CausalKLError(source, f"{where}.sae_id", f"'{sae_id}' is not an SAE of release '{release}' ({len(saes)} SAEs)",
                            f"{_suggest(sae_id, list(saes))} ('{{layer}}' in sae_id is the layer)")
    converter = info.get("conversion_func")
    if converter in sae_dictionary.REFUSED:
        why, fix = sae_dictionary.REFUSED[converter]
        raise CausalKLError(source, f"{where}.release", f"release '{release}' ({converter}): {why}", fix)
    sae_scope.check_release(release, info, entry, source, f"{where}.sae_id")  # cross-layer transcoders: one line
    if converter not in CONVERTERS:
        raise CausalKLError(source, f"{where}.release", f"release '{release}' is in SAELens' '{converter}' format, which "
                            "causal-kl does not read", f"use a release in one of the formats read "
                            f"({', '.join(str(c) for c in CONVERTERS if c)} or SAELens' own), or convert the SAE to "
                            "SAELens' format and give its path")
    overrides = dict(info.get("config_overrides") or {})
    if (overrides.get("model_from_pretrained_kwargs") or {}).get("center_writing_weights"):
        raise CausalKLError(source, f"{where}.release", f"release '{release}' was trained on TransformerLens' model with "
                            "center_writing_weights (pretrained_saes.yaml config_overrides): its SAEs read a mean-centred "
                            "residual stream, which the Hugging Face model's is not",
                            "use a release trained on the Hugging Face model's residual stream")
    overrides.pop("model_from_pretrained_kwargs", None)
    factor = entry.get("norm_scaling_factor")
    return {"repo_id": info["repo_id"], "folder": str(entry["path"]), "format": CONVERTERS[converter],
            "converter": converter, "norm_scaling_factor": None if factor is None else float(factor),
            "config_overrides": overrides}


# ----------------------------------------------------------------------------------------- the cache
def _join(folder: str, filename: str) -> str:
    return str(PurePosixPath(folder) / filename) if folder not in ("", ".") else filename


def _cached(repo_id: str, folder: str, filename: str, revision: str | None) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(repo_id, _join(folder, filename), cache_dir=str(hub_cache_dir()), revision=revision)
    return Path(hit) if isinstance(hit, str) else None


def _snapshot_of(hit: Path, rel: str) -> Path:
    """``snapshots/<commit>`` above a cached file whose path in the repo is ``rel`` (the file's own path, not its blob:
    never resolved)."""
    snap = hit
    for _ in PurePosixPath(rel).parts:
        snap = snap.parent
    return snap


def _not_cached(source: str, field: str, repo_id: str, folder: str, revision: str | None, missing: list[str]) -> CausalKLError:
    at = f"@{revision}" if revision and revision != "main" else ""
    what = ", ".join(_join(folder, m) for m in missing)
    one_file = missing == [sae_dictionary.THE_FILE]  # the folder is the SAE's one file
    return CausalKLError(source, field, f"{repo_id}{at}: {what} not in the Hugging Face cache ({hub_cache_dir()}; "
                         "causal-kl reads hub SAEs from the cache only and never downloads)",
                         f"download it into the cache once: {download_command(repo_id, folder, revision, file=one_file)}")


def find_in_cache(repo_id: str, folder: str, revision: str | None, files: tuple[str, ...] | None, source: str,
                  field: str, label: str, norm_scaling_factor: float | None = None,
                  config_overrides: dict | None = None, format_name: str | None = None) -> HubSAE:
    """The cached snapshot of ``folder`` in ``repo_id`` at ``revision`` (a branch, tag or commit; None: main).

    ``files``: the files the SAE's format needs (``FORMAT_FILES``; None: the folder is recognised by
    ``PROBE_FILES`` and its format by ``causal_kl.sae_format.locate_sae``). A missing one is the one-line error
    with the ``hf download`` command. ``format_name``: the format when the caller knows it (``causal_kl.sae_scope``'s,
    whose SAE of a one-file format is the first of ``files``, not the folder)."""
    revision = revision or None
    if files is None:
        probe = next(((f, h) for f in PROBE_FILES if (f or folder) and (h := _cached(repo_id, folder, f, revision)) is not None),
                     None)
        if probe is None:
            raise _not_cached(source, field, repo_id, folder, revision, ["*"])
        found_format, found = fmt.locate_sae(probe[1] if probe[0] == sae_dictionary.THE_FILE else probe[1].parent)
        files = (found.name,) if found_format == "gemma_scope" else FORMAT_FILES[found_format]
    hits = {f: _cached(repo_id, folder, f, revision) for f in files}
    missing = [f for f, h in hits.items() if h is None]
    if missing:
        raise _not_cached(source, field, repo_id, folder, revision, missing)
    first = next(iter(hits))
    snapshot = _snapshot_of(hits[first], _join(folder, first))
    if snapshot.parent.name != "snapshots":
        raise CausalKLError(snapshot, None, "not a Hugging Face cache snapshot folder",
                            f"download it into the cache once: {download_command(repo_id, folder, revision)}")
    path = snapshot / folder if folder else snapshot
    if format_name is None:
        format_name, _ = fmt.locate_sae(path)
    elif format_name in sae_scope.FILE_FORMATS:
        path = path / first
    return HubSAE(repo_id=repo_id, folder=folder, revision=snapshot.name, path=path, format=format_name,
                  files=tuple(files), norm_scaling_factor=norm_scaling_factor,
                  config_overrides=dict(config_overrides or {}), label=label)


def resolve_named(entry: dict, layer: int, source: str = "config", name: str | None = None) -> HubSAE:
    """The named SAE of an ``sae`` route at ``layer``, found in the cache (see the module docstring).

    An entry the workflow has pinned (``entry['hub']``: ``HubSAE.pin()`` at parse time, with the commit) is looked
    up at exactly that commit, without SAELens' YAML: jobs run where sae-lens may not be installed."""
    where = f"routes.{name}" if name else "route"
    fill = lambda s: str(s).replace("{layer}", str(int(layer)))  # noqa: E731
    if entry.get("hub"):
        pin = entry["hub"]
        if pin.get("format") in sae_scope.FORMATS:
            return sae_scope.find_in_cache(pin["repo"], pin["folder"], pin["revision"], tuple(pin["files"]), pin["format"],
                                           source, f"{where}.hub", pin.get("label", pin["repo"]),
                                           pin.get("norm_scaling_factor"), pin.get("config_overrides"))
        return find_in_cache(pin["repo"], pin["folder"], pin["revision"], tuple(pin["files"]), source, f"{where}.hub",
                             pin.get("label", pin["repo"]), pin.get("norm_scaling_factor"), pin.get("config_overrides"))
    revision = entry.get("revision")
    if entry.get("release") is not None:
        sae_id = fill(entry.get("sae_id", ""))
        found = release_sae(str(entry["release"]), sae_id, source, name)
        if found["format"] in sae_scope.FORMATS:
            args = (source, f"{where}.release", f"{entry['release']}/{sae_id}", found["norm_scaling_factor"],
                    found["config_overrides"])
            if found["format"] in sae_scope.FILE_FORMATS:
                return sae_scope.find_file(found["repo_id"], found["folder"], revision, *args)
            return sae_scope.find_in_cache(found["repo_id"], found["folder"], revision, FORMAT_FILES[found["format"]],
                                           found["format"], *args)
        files = FORMAT_FILES[found["converter"] if found["format"] == "gemma_scope" else found["format"]]
        return find_in_cache(found["repo_id"], found["folder"], revision, files, source, f"{where}.release",
                             f"{entry['release']}/{sae_id}", found["norm_scaling_factor"], found["config_overrides"])
    repo, folder = str(entry["repo"]), fill(entry.get("folder", "")).strip("/")
    if sae_scope.claims_file(repo, folder, revision):  # one file of a folder of them (mwhanna's, a hook_z .pt + cfg)
        return sae_scope.find_file(repo, folder, revision, source, f"{where}.repo", f"{repo}/{folder}")
    return find_in_cache(repo, folder, revision, None, source, f"{where}.repo", f"{repo}/{folder}")
