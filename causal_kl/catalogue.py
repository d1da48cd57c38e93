"""How much of SAELens' catalogue causal-kl reads: every SAE of the installed sae-lens' ``pretrained_saes.yaml``,
read or refused, from the catalogue's metadata alone (``causal-kl catalogue`` prints it; the README's table is its
``--markdown``).

Each entry (release + SAE id) is classified by the registries the readers use, so a format or a family added
there is counted here without an edit. It is read unless one of these refuses it (the first found, in this order,
is its reason):

- the format: ``causal_kl.sae_hub.CONVERTERS`` (SAELens' ``conversion_func`` -> the format read); a converter absent
  there, or one a newer sae-lens brings, is refused "format not read" (``NOT_READ`` gives the specific reason of
  the kinds refused on purpose: cross-layer transcoders, temporal SAEs);
- the model: ``MODEL_TYPES`` maps the catalogue's ``model`` names (TransformerLens' ``gpt2-small``, hub ids such as
  ``google/gemma-3-27b-it``) to the Hugging Face ``model_type`` of their ``config.json``; a name not there is
  refused "model not known";
- a release trained on TransformerLens' model with ``center_writing_weights`` is refused, as ``sae_hub.release_sae``
  refuses it;
- the family: ``causal_kl.families.family_for`` of the model type (of its text config's for a multimodal one);
  none is "model family not patched";
- the hook site: ``SITE_RULES``, one rule per converter, reads the point(s) from the release's repo, the SAE's id
  and path as SAELens' loader for that converter derives its ``hook_name`` (see each rule); the family must have
  the hook (``causal_kl.families.hook_modules``), a transcoder both of its hooks, its output after its input; the
  embeddings are no hook of a block;
- the architecture, where the catalogue says it (``dictionary_learning_1`` release names; temporal SAEs): one not in
  ``causal_kl.sae_format.ARCHITECTURES`` is refused.

**SAELens' own format (conversion_func null)**: the hook is in each SAE's ``cfg.json``, which the catalogue does
not hold. Every release of sae-lens 6.54 names its SAEs by that hook (the id is ``blocks.L.hook_...``, a
feature-splitting width suffix ``_768`` aside), so the rule reads the id; failing that, the path; failing that, the
release's name (``-res``/``resid-post`` -> resid_post, ``mlp-out`` -> mlp_out, ...) at the layer ``layer_N`` in the
path or id; failing that, the hook is not known and the entry is refused. What the
files alone can refuse (an architecture or normalisation not run, widths) is not seen here: the count is of what
causal-kl reads when the files are what the catalogue says they are. ``tests/test_catalogue.py`` lays out files of
a sample entry of every release of a format read today and checks the reader agrees.

Torch-free; reads only the YAML.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable

from causal_kl import families
from causal_kl import hooks as H
from causal_kl import sae_format as fmt
from causal_kl import sae_hub

MODEL_TYPES: dict[str, str] = {
    # TransformerLens' names (SAELens' older releases)
    "gpt2-small": "gpt2",
    "pythia-70m-deduped": "gpt_neox",
    "mistral-7b": "mistral",
    "gemma-2b": "gemma", "gemma-2b-it": "gemma",
    "gemma-2-2b": "gemma2", "gemma-2-9b": "gemma2", "gemma-2-9b-it": "gemma2", "gemma-2-27b": "gemma2",
    "qwen3-0.6b": "qwen3", "qwen3-1.7b": "qwen3", "qwen3-4b": "qwen3", "qwen3-8b": "qwen3", "qwen3-14b": "qwen3",
    # hub ids (their config.json's model_type)
    "google/gemma-3-270m": "gemma3_text", "google/gemma-3-270m-it": "gemma3_text",
    "google/gemma-3-1b-pt": "gemma3_text", "google/gemma-3-1b-it": "gemma3_text",
    "google/gemma-3-4b-pt": "gemma3", "google/gemma-3-4b-it": "gemma3",
    "google/gemma-3-12b-pt": "gemma3", "google/gemma-3-12b-it": "gemma3",
    "google/gemma-3-27b-pt": "gemma3", "google/gemma-3-27b-it": "gemma3",
    "meta-llama/Llama-3.1-8B": "llama", "meta-llama/Llama-3.1-8B-Instruct": "llama",
    "meta-llama/Meta-Llama-3-8B-Instruct": "llama", "meta-llama/Llama-3.3-70B-Instruct": "llama",
    "deepseek-ai/DeepSeek-R1-Distill-Llama-8B": "llama",
    "Qwen/Qwen2.5-7B-Instruct": "qwen2",
    "Qwen/Qwen3-1.7B-Base": "qwen3", "Qwen/Qwen3-8B-Base": "qwen3",
    "Qwen/Qwen3-30B-A3B-Base": "qwen3_moe",
    "Qwen/Qwen3.5-2B-Base": "qwen3_5", "Qwen/Qwen3.5-9B-Base": "qwen3_5", "Qwen/Qwen3.5-27B": "qwen3_5",
    "Qwen/Qwen3.5-35B-A3B-Base": "qwen3_5_moe",
    "openai/gpt-oss-20b": "gpt_oss",
}
"""The catalogue's ``model`` names -> the ``model_type`` of the model's ``config.json`` (a multimodal one's top level)."""

TEXT_MODEL_TYPES = {"gemma3": "gemma3_text", "qwen3_5": "qwen3_5_text", "qwen3_5_moe": "qwen3_5_moe_text"}
"""A multimodal ``model_type`` -> its ``text_config``'s, tried when the top level has no family (as
``families.check_family`` does)."""

NOT_READ = {"mntss_clt_layer_transcoder": "cross-layer transcoder (writes every later layer's MLP output)",
            "temporal": "temporal SAE (reads the context's earlier activations)"}
"""Converters refused for what they are, not only because no reader exists (the reason said instead of
"format not read")."""

FORMAT_NOT_READ = "format not read"
MODEL_NOT_KNOWN = "model not known"
FAMILY_NOT_PATCHED = "model family not patched"
HOOK_NOT_IN_FAMILY = "hook not available in that family"
NOT_A_BLOCK_HOOK = "hook not in a block (the embeddings)"
HOOK_NOT_KNOWN = "hook not known from the catalogue"
CENTRED = "trained on TransformerLens' mean-centred residual stream"
TRANSCODER_ORDER = "transcoder's output not after its input in the block"


@dataclass(frozen=True)
class Site:
    """Where an entry reads (and, a transcoder, writes), as SAELens' loader names it; None where unknown."""

    hook_in: str | None  # SAELens/TransformerLens hook name, e.g. blocks.3.hook_resid_post
    hook_out: str | None = None  # transcoders only
    architecture: str | None = None  # where the catalogue tells it (SAELens' names)


@dataclass(frozen=True)
class Entry:
    """One SAE of the catalogue, classified."""

    release: str
    sae_id: str
    model: str
    converter: str | None
    hook: str | None  # SAELens' hook name(s) the rule derived (``in -> out`` for a transcoder), None when unknown
    format: str | None  # the format read (sae_hub.CONVERTERS), None when not read
    model_type: str | None
    family: str | None
    point_in: H.Point | None
    point_out: H.Point | None
    architecture: str | None
    reason: str | None  # None: read

    @property
    def read(self) -> bool:
        return self.reason is None

    @property
    def site(self) -> str:
        """The point kind: ``resid_post``, ``attn_z``, ``mlp_in->mlp_out`` (a transcoder), ``?`` when unknown."""
        if self.point_in is None:
            return "embed" if self.hook and fmt.parse_hook_name(self.hook).kind == "embed" else "?"
        if self.point_out is not None and self.point_out != self.point_in:
            return f"{self.point_in.hook}->{self.point_out.hook}"
        return self.point_in.hook


# --------------------------------------------------------------------------- hook sites per converter
def _int(pattern: str, *texts: str) -> int | None:
    for text in texts:
        if m := re.search(pattern, text):
            return int(m.group(1))
    return None


def _blocks(layer: int | None, hook: str) -> str | None:
    return None if layer is None else f"blocks.{layer}.{hook}"


_SUFFIX = re.compile(r"^(blocks\.\d+\.(?:attn\.)?hook_[a-z_]+?)(?:_\d+)?$")
_RELEASE_HOOKS = (("resid-post", "hook_resid_post"), ("resid-mid", "hook_resid_mid"), ("attn-out", "hook_attn_out"),
                  ("att", "hook_attn_out"), ("mlp-out", "hook_mlp_out"), ("mlp", "hook_mlp_out"),
                  ("hook-z", "attn.hook_z"), ("res", "hook_resid_post"))


def _tl_name(text: str) -> str | None:
    """A TransformerLens hook name in an id or path (``.../blocks.8.hook_resid_pre_768`` -> ``blocks.8.hook_resid_pre``)."""
    for part in reversed(text.split("/")):
        if (m := _SUFFIX.match(part)) and (H.tl_hook(m.group(1)) or m.group(1).endswith("hook_resid_pre")):
            return m.group(1)
    return None


def _saelens(release: str, info: dict, sae: dict) -> Site:
    """SAELens' own format: the hook is ``cfg.json``'s ``hook_name``; the catalogue names each SAE by it (the id),
    else the path says it, else the release's name says the kind of hook (layer unknown)."""
    if name := _tl_name(str(sae["id"])) or _tl_name(str(sae["path"])):
        return Site(name)
    layer = _int(r"layer_?(\d+)", str(sae["path"]), str(sae["id"]))
    for word, hook in _RELEASE_HOOKS:
        if layer is not None and re.search(rf"(?:^|[-_]){word}(?:$|[-_])", release):
            return Site(_blocks(layer, hook))
    return Site(None)


def _gemma_2(release: str, info: dict, sae: dict) -> Site:
    """``get_gemma_2_config_from_hf``: the layer from ``layer_N`` in the path; ``res`` in the repo -> resid_post
    (``embedding`` folders: hook_embed), ``mlp`` -> mlp_out, ``att`` -> attn.hook_z."""
    repo, path = info["repo_id"], str(sae["path"])
    layer = _int(r"layer_(\d+)", path)
    if "res" in repo:
        return Site("hook_embed" if "embedding" in path else _blocks(layer, "hook_resid_post"))
    if "mlp" in repo:
        return Site(_blocks(layer, "hook_mlp_out"))
    if "att" in repo:
        return Site(_blocks(layer, "attn.hook_z"))
    return Site(None)


def _gemma_3(release: str, info: dict, sae: dict) -> Site:
    """``get_gemma_3_config_from_hf``: the folder's kind (resid_post, attn_out -> attn.hook_z, mlp_out, transcoder or
    clt -> hook_mlp_in -> hook_mlp_out) and ``layer_N``."""
    path = str(sae["path"])
    layer = _int(r"layer_(\d+)", path)
    if "resid_post" in path:
        return Site(_blocks(layer, "hook_resid_post"))
    if "attn_out" in path:
        return Site(_blocks(layer, "attn.hook_z"))
    if "mlp_out" in path:
        return Site(_blocks(layer, "hook_mlp_out"))
    if "transcoder" in path or "clt" in path:
        arch = "clt" if "clt" in path.split("/")[0] else None
        return Site(_blocks(layer, "hook_mlp_in"), _blocks(layer, "hook_mlp_out"), arch)
    return Site(None)


def _sparsify(release: str, info: dict, sae: dict) -> Site:
    """``get_sparsify_config_from_disk``: the hookpoint folder, a module path (``layers.N`` -> resid_post;
    ``layers.N.mlp`` ... read by the model's family's table, as ``causal_kl.sae_format.sparsify_hook``)."""
    return Site(fmt.sparsify_hookpoint(str(sae["path"])))


def _connor_rob_hook_z(release: str, info: dict, sae: dict) -> Site:
    """``get_connor_rob_hook_z_config_from_hf``: ``act_name`` of the ``_cfg.json`` (``blocks.N.attn.hook_z``), which the
    catalogue's id is; else ``_LN_`` in the file name."""
    layer = _int(r"^blocks\.(\d+)\.", str(sae["id"])) if H.tl_hook(str(sae["id"])) else _int(r"_L(\d+)_", str(sae["path"]))
    return Site(_blocks(layer, "attn.hook_z"))


_LLAMA_SCOPE = {"r": "hook_resid_post", "a": "hook_attn_out", "m": "hook_mlp_out"}


def _llama_scope(release: str, info: dict, sae: dict) -> Site:
    """``get_llama_scope_config_from_hf`` (and ``_r1_distill``): ``hyperparams.json``'s ``hook_point_in``; the folder
    ``...-L{N}{R|A|M}-...`` / ``.../L{N}R`` names it (R: resid_post, A: attn_out, M: mlp_out)."""
    m = re.search(r"(?:^|[-/])L(\d+)([RAM])(?:$|[-/])", str(sae["path"]))
    return Site(_blocks(int(m.group(1)), _LLAMA_SCOPE[m.group(2).lower()]) if m else None)


_DL_ARCH = (("gated", "gated"), ("matryoshka", "jumprelu"), ("batchtopk", "jumprelu"), ("topk", "topk"),
            ("vanilla", "standard"), ("standard", "standard"), ("panneal", "standard"))


def _dictionary_learning_1(release: str, info: dict, sae: dict) -> Site:
    """``get_dictionary_learning_config_1_from_hf``: always ``blocks.{trainer.layer}.hook_resid_post`` (the folder's
    ``resid_post_layer_N``); the architecture from the trainer's ``dict_class`` as the release's name says it (gated,
    (Matryoshka) BatchTopK -> jumprelu, TopK, vanilla/standard/p-anneal -> standard), else unknown."""
    layer = _int(r"resid_post_layer_(\d+)", str(sae["path"]), str(sae["id"]))
    low = (release + "/" + str(sae["path"])).lower().replace("_", "").replace("-", "")
    arch = next((a for word, a in _DL_ARCH if word in low), None)
    return Site(_blocks(layer, "hook_resid_post"), architecture=arch)


def _layer_resid_post(pattern: str, doc: str) -> Callable[[str, dict, dict], Site]:
    def rule(release: str, info: dict, sae: dict) -> Site:
        return Site(_blocks(_int(pattern, str(sae["path"])), "hook_resid_post"))

    rule.__doc__ = doc
    return rule


def _transcoder(pattern: str, doc: str) -> Callable[[str, dict, dict], Site]:
    def rule(release: str, info: dict, sae: dict) -> Site:
        layer = _int(pattern, str(sae["path"]))
        return Site(_blocks(layer, "hook_mlp_in"), _blocks(layer, "hook_mlp_out"))

    rule.__doc__ = doc
    return rule


def _temporal(release: str, info: dict, sae: dict) -> Site:
    """``get_temporal_sae_config_from_hf``: ``blocks.N.hook_resid_post`` (``layer_N`` in the folder), architecture temporal."""
    return Site(_blocks(_int(r"layer_(\d+)", str(sae["path"])), "hook_resid_post"), architecture="temporal")


SITE_RULES: dict[str | None, Callable[[str, dict, dict], Site]] = {
    None: _saelens,
    "gemma_2": _gemma_2,
    "gemma_3": _gemma_3,
    "sparsify": _sparsify,
    "connor_rob_hook_z": _connor_rob_hook_z,
    "llama_scope": _llama_scope,
    "llama_scope_r1_distill": _llama_scope,
    "dictionary_learning_1": _dictionary_learning_1,
    "qwen_scope": _layer_resid_post(r"layer(\d+)\.sae\.pt",
                                    "``get_qwen_scope_config_from_hf``: ``layerN.sae.pt`` -> resid_post."),
    "deepseek_r1": _layer_resid_post(r"l(\d+)", "``get_deepseek_r1_config_from_hf``: ``lN`` in the file name -> resid_post."),
    "goodfire": _layer_resid_post(r"-l(\d+)\.pth?$", "``get_goodfire_config_from_hf``: ``-lN.pt(h)`` -> resid_post (SAELens "
                                  "hard-codes its two repos at these layers)."),
    "gemma_2_transcoder": _transcoder(r"layer_(\d+)", "``get_gemma_2_transcoder_config_from_hf``: ``layer_N`` -> "
                                      "ln2.hook_normalized (the MLP's input) -> hook_mlp_out."),
    "mwhanna_transcoder": _transcoder(r"layer_(\d+)", "``get_mwhanna_transcoder_config_from_hf``: ``layer_N.safetensors`` "
                                      "-> mlp.hook_in -> hook_mlp_out."),
    "mntss_clt_layer_transcoder": _transcoder(r"^(\d+)$", "``get_mntss_clt_layer_config_from_hf``: the folder is the layer; "
                                              "the hooks are config.yaml's (read here as the MLP's input -> output)."),
    "temporal": _temporal,
}
"""SAELens' ``conversion_func`` -> how its loader derives the hook from the release's repo, the SAE's id and path.
A converter with no rule (a newer sae-lens') has no site; it is refused as a format not read unless
``sae_hub.CONVERTERS`` reads it, and then "hook not known from the catalogue" until a rule is added here."""


# ------------------------------------------------------------------------------------ classification
def _point(hook: str | None, family: families.Family | None) -> tuple[H.Point | None, str | None]:
    """A SAELens hook name -> (point, reason it is none)."""
    if hook is None:
        return None, HOOK_NOT_KNOWN
    site = fmt.parse_hook_name(hook, family.hooks if family is not None else None)
    if site.point is None:
        if site.kind == "embed":
            return None, NOT_A_BLOCK_HOOK
        return None, HOOK_NOT_IN_FAMILY if family is not None and H.is_module_path(hook) else HOOK_NOT_KNOWN
    return site.point, None


def family_of(model_type: str | None) -> families.Family | None:
    """The family of a catalogue model's ``model_type`` (its text config's for a multimodal one), None when not patched."""
    family = families.family_for(model_type)
    if family is None and model_type in TEXT_MODEL_TYPES:
        family = families.family_for(TEXT_MODEL_TYPES[model_type])
    return family


def classify(release: str, info: dict, sae: dict) -> Entry:
    """One entry of the catalogue -> read, or refused with the first reason (in the order of the module docstring)."""
    converter = info.get("conversion_func")
    model = str(info.get("model"))
    model_type = MODEL_TYPES.get(model)
    family = family_of(model_type)
    rule = SITE_RULES.get(converter)
    try:
        site = rule(release, info, sae) if rule is not None else Site(None)
    except (KeyError, TypeError, ValueError, AttributeError):  # an entry of a newer YAML the rule cannot parse
        site = Site(None)
    point_in, why_in = _point(site.hook_in, family)
    point_out, why_out = _point(site.hook_out, family) if site.hook_out else (point_in, why_in)
    reason = None
    if converter not in sae_hub.CONVERTERS:
        reason = NOT_READ.get(converter, FORMAT_NOT_READ)
    elif site.architecture == "clt":
        reason = NOT_READ["mntss_clt_layer_transcoder"]
    elif model_type is None:
        reason = MODEL_NOT_KNOWN
    elif ((info.get("config_overrides") or {}).get("model_from_pretrained_kwargs") or {}).get("center_writing_weights"):
        reason = CENTRED
    elif family is None:
        reason = FAMILY_NOT_PATCHED
    elif why_in or why_out:
        reason = why_in or why_out
    elif any(p.hook not in families.hook_modules(family, {}) for p in (point_in, point_out)):
        reason = HOOK_NOT_IN_FAMILY
    elif site.hook_out and not _in_order(point_in, point_out):
        reason = TRANSCODER_ORDER
    elif site.architecture is not None and site.architecture not in fmt.ARCHITECTURES:
        reason = NOT_READ.get(site.architecture, f"architecture {site.architecture} not read")
    hook = f"{site.hook_in} -> {site.hook_out}" if site.hook_out else site.hook_in
    return Entry(release, str(sae.get("id")), model, converter, hook, sae_hub.CONVERTERS.get(converter), model_type,
                 family.name if family is not None else None, point_in, point_out, site.architecture, reason)


def _in_order(p_in: H.Point, p_out: H.Point) -> bool:
    order = ("attn_z", "attn_out", "resid_mid", "mlp_in", "mlp_out", "resid_post")
    return p_in.layer == p_out.layer and order.index(p_out.hook) > order.index(p_in.hook)


def entries(releases: dict[str, dict] | None = None) -> list[Entry]:
    """Every SAE of the catalogue (default: the installed sae-lens'), classified, in the YAML's order."""
    releases = sae_hub.saelens_releases() if releases is None else releases
    return [classify(release, info, sae) for release, info in releases.items() for sae in info.get("saes") or []]


# ------------------------------------------------------------------------------------------ the tables
BY = {"release": lambda e: e.release, "converter": lambda e: str(e.converter) if e.converter else "saelens (null)",
      "model": lambda e: e.model, "family": lambda e: e.family or f"({e.model_type or '?'})",
      "reason": lambda e: e.reason or "read"}
"""What ``--by`` groups by."""


@dataclass
class Row:
    key: str
    models: set
    converters: set
    saes: int = 0
    read: int = 0
    sites: Counter = None  # type: ignore[assignment]
    reasons: Counter = None  # type: ignore[assignment]

    @property
    def refused(self) -> int:
        return self.saes - self.read


def rows(items: Iterable[Entry], by: str = "release") -> list[Row]:
    """One row per ``by`` value, in first-seen order."""
    out: dict[str, Row] = {}
    key_of = BY[by]
    for e in items:
        k = key_of(e)
        row = out.get(k) or out.setdefault(k, Row(k, set(), set(), sites=Counter(), reasons=Counter()))
        row.models.add(e.model)
        row.converters.add(str(e.converter) if e.converter else "null")
        row.saes += 1
        row.read += e.read
        row.sites[e.site] += 1
        if not e.read:
            row.reasons[e.reason] += 1
    return list(out.values())


def _reasons(c: Counter) -> str:
    return "; ".join(f"{r} ({n})" for r, n in c.most_common())


def _few(values: set, n: int = 2) -> str:
    v = sorted(values)
    return ", ".join(v[:n]) + (f" +{len(v) - n}" if len(v) > n else "")


def saelens_version() -> str:
    """The installed sae-lens' version (``?`` when it has none)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sae-lens")
    except PackageNotFoundError:
        return "?"


def saelens_pretrained_file_label() -> str:
    """The catalogue counted, for messages: the installed ``pretrained_saes.yaml`` (sae-lens version)."""
    return f"{sae_hub.pretrained_saes_file()} (sae-lens {saelens_version()})"


def total_line(items: list[Entry]) -> str:
    n, r = len(items), sum(e.read for e in items)
    releases = len({e.release for e in items})
    return (f"total: {n:,} SAEs in {releases} releases (sae-lens {saelens_version()}): {r:,} read "
            f"({100 * r / n:.1f}%), {n - r:,} refused" if n else "total: no SAEs")


def render(items: list[Entry], by: str = "release", markdown: bool = False) -> str:
    """The table ``causal-kl catalogue`` prints: per ``by`` value (``BY``) the SAEs, how many are read and refused,
    the hook sites and the reasons; then the total."""
    table = rows(items, by)
    if by != "release":  # releases in the YAML's order; the rest largest first
        table.sort(key=lambda r: -r.saes)
    head = [by, "model(s)", "converter", "SAEs", "read", "refused", "hook sites", "why refused"]
    body = [[r.key, _few(r.models), _few(r.converters, 3), f"{r.saes:,}", f"{r.read:,}", f"{r.refused:,}",
             ", ".join(sorted(r.sites)), _reasons(r.reasons)] for r in table]
    if by == "model":
        head.pop(1)
        for b in body:
            b.pop(1)
    if by == "converter":
        head.pop(2)
        for b in body:
            b.pop(2)
    total = total_line(items)
    if markdown:
        lines = ["| " + " | ".join(f"`{h}`" if i == 0 else h for i, h in enumerate(head)) + " |",
                 "|" + "|".join("---:" if h in ("SAEs", "read", "refused") else "---" for h in head) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in b) + " |" for b in body]
        return "\n".join(lines) + f"\n\n{total[0].upper() + total[1:]}."
    widths = [min(max(len(h), *(len(b[i]) for b in body)) if body else len(h), 60) for i, h in enumerate(head)]
    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < len(cells) - 1 else c for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(head), *(line(b) for b in body), "", total])


def render_refused(items: list[Entry]) -> str:
    """One line per refused entry: ``release / sae_id: reason [model, converter, site]``."""
    out = [f"{e.release} / {e.sae_id}: {e.reason} [{e.model}, {e.converter or 'saelens'}, {e.hook or '?'}]"
           for e in items if not e.read]
    return "\n".join(out) if out else "(none refused)"
