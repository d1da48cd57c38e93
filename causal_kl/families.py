"""The model families causal-kl patches, and where each keeps the parts the patch engine needs.

One ``Family`` per block layout, read off transformers' modeling files: where the decoder sits under
the ``*ForCausalLM`` (or multimodal) class, what its blocks, final norm, token and position
embeddings, rotary module and each block's self-attention are called. ``models.wrap_model`` finds a
model's parts through its family and nothing else; the patch engine asks the ``LoadedModel`` for
them and never for a family name. Adding a family is one row here (plus a tiny fixture in the tests).

What the rows say (transformers 5.x):

- Llama-style decoders (Gemma-2, Gemma-3, Llama, Mistral, Qwen2, Qwen3): ``model.layers``,
  ``model.norm``, ``model.embed_tokens``, ``model.rotary_emb``, ``block.self_attn``; the multimodal
  Gemma-3 keeps its text decoder at ``model.language_model``.
- GPT-2: ``transformer.h``, ``transformer.ln_f``, ``transformer.wte`` and learned absolute positions
  ``transformer.wpe`` added at the input (no rotary: blocks never read positions), ``block.attn``.
- Gemma (1), Qwen3-MoE and gpt-oss are Llama-style too (Gemma scales its embeddings inside ``embed_tokens``; the
  MoE blocks' ``mlp`` is the router and its experts, gpt-oss's returning ``(hidden, router_scores)``; gpt-oss's
  attention adds a learned sink logit per head to every softmax, which the window attention models).
- Qwen3.5 (dense and MoE): ``layer_types`` mixes ``linear_attention`` blocks (a Gated DeltaNet at
  ``block.linear_attn``, a recurrent state over the whole prefix) with ``full_attention`` ones (``block.self_attn``,
  its output gated per head). The checkpoints are multimodal (``Qwen3_5ForConditionalGeneration``, text decoder
  at ``model.language_model``); ``AutoModelForCausalLM`` loads their text decoder as ``Qwen3_5ForCausalLM``. The
  window pass cannot carry a linear-attention block's recurrent state from the clean prefix, so these models are
  patched by the naive path (``patching``: said once in the log and in the outputs' provenance).
- GPT-NeoX / Pythia: ``gpt_neox.layers``, ``gpt_neox.final_layer_norm``, ``gpt_neox.embed_in``,
  ``gpt_neox.rotary_emb`` (partial rotary: the attention rotates the first ``rotary_pct`` of each head),
  ``block.attention``; parallel residual ``x + attn(ln1(x)) + mlp(ln2(x))`` inside the block.

A hook's module path may name alternatives, ``a|b``: the first the block has (Qwen3.5's token mixer is
``self_attn`` in full-attention blocks and ``linear_attn`` in the others).

Sliding windows: a config's ``layer_types`` says which blocks slide; a config with a
``sliding_window`` and no ``layer_types`` (Mistral) slides in every block, as transformers' Mistral
builds its mask (``create_sliding_window_causal_mask`` whenever ``sliding_window`` is set).

Torch-free at import: the parse-time checks (``causal_kl.checks``) read it from ``config.json`` alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from causal_kl.errors import CausalKLError
from causal_kl.hooks import HOOKS, RESID_POST, TL_NAME, HookModule


@dataclass(frozen=True)
class Family:
    """Where one block layout keeps its parts (attribute names, as transformers spells them)."""

    name: str  # as users say it
    model_types: tuple[str, ...]  # config.json ``model_type`` values of the family
    decoder: tuple[str, ...] = ("model.language_model", "model")  # dotted paths from the model class, first found
    blocks: str = "layers"  # decoder attribute: the ModuleList of blocks
    final_norm: str = "norm"
    embed_tokens: str = "embed_tokens"
    embed_positions: str | None = None  # learned absolute positions added at the input (GPT-2)
    rotary: str | None = "rotary_emb"  # decoder attribute: the rotary module (None: positions enter at the input)
    attention: str = "self_attn"  # block attribute: the self-attention module (has ``layer_idx`` and ``config``)
    hooks: Mapping[str, HookModule] = field(default_factory=lambda: LLAMA_HOOKS)  # hook -> module of the block
    parallel_residual: str | None = None  # config field that, when true, feeds attention and MLP the block's input


def _hooks(**where: tuple[str, str]) -> Mapping[str, HookModule]:
    return MappingProxyType({hook: HookModule(*where[hook]) for hook in HOOKS if hook in where})


LLAMA_HOOKS = _hooks(resid_mid=("post_attention_layernorm", "in"), attn_z=("self_attn.o_proj", "in"),
                     attn_out=("self_attn.o_proj", "out"), mlp_in=("mlp", "in"), mlp_out=("mlp", "out"))
"""Llama, Mistral, Qwen2/3: ``x + o_proj(attn(input_layernorm(x)))``, then ``+ mlp(post_attention_layernorm(.))``."""
GEMMA_HOOKS = _hooks(resid_mid=("pre_feedforward_layernorm", "in"), attn_z=("self_attn.o_proj", "in"),
                     attn_out=("post_attention_layernorm", "out"), mlp_in=("mlp", "in"),
                     mlp_out=("post_feedforward_layernorm", "out"))
"""Gemma-2/3: the attention's and the MLP's outputs are normed again before they join the residual (SAELens' Gemma
Scope 2 loader: ``hook_mlp_out`` = ``post_feedforward_layernorm.output``, ``attn.hook_z`` = ``o_proj.input``,
``hook_mlp_in`` = ``pre_feedforward_layernorm.output`` = the MLP's input)."""
GPT2_HOOKS = _hooks(resid_mid=("ln_2", "in"), attn_z=("attn.c_proj", "in"), attn_out=("attn.c_proj", "out"),
                    mlp_in=("mlp", "in"), mlp_out=("mlp", "out"))
"""GPT-2: ``x + attn.c_proj(heads)``, then ``+ mlp(ln_2(.))`` (dropout is the identity in eval)."""
NEOX_HOOKS = _hooks(resid_mid=("post_attention_layernorm", "in"), attn_z=("attention.dense", "in"),
                    attn_out=("attention.dense", "out"), mlp_in=("mlp", "in"), mlp_out=("mlp", "out"))
"""GPT-NeoX: with ``use_parallel_residual`` (every Pythia) ``x + attention(ln1(x)) + mlp(ln2(x))``: the MLP reads the
block's input and there is no residual between the two (no ``resid_mid``)."""

QWEN3_5_HOOKS = _hooks(resid_mid=("post_attention_layernorm", "in"), attn_out=("self_attn.o_proj|linear_attn.out_proj", "out"),
                       mlp_in=("mlp", "in"), mlp_out=("mlp", "out"))
"""Qwen3.5: ``x + mixer(input_layernorm(x))``, then ``+ mlp(post_attention_layernorm(.))``; the mixer is a gated
full attention or a Gated DeltaNet, whose outputs both go through an output projection (attn_out). No attn_z: a
linear-attention block has no attention heads (its ``out_proj`` reads gated delta-rule values of another width),
and a full-attention block's ``o_proj`` reads the heads already gated by the query's gate."""


FAMILIES: tuple[Family, ...] = (
    Family("Gemma-3", ("gemma3", "gemma3_text"), hooks=GEMMA_HOOKS),
    Family("Gemma-2", ("gemma2",), hooks=GEMMA_HOOKS),
    Family("Llama", ("llama",)),
    Family("Mistral", ("mistral",)),
    Family("Qwen2", ("qwen2",)),
    Family("Qwen3", ("qwen3",)),
    Family("Gemma", ("gemma",)),
    Family("Qwen3-MoE", ("qwen3_moe",)),
    Family("Qwen3.5", ("qwen3_5", "qwen3_5_text"), hooks=QWEN3_5_HOOKS),
    Family("Qwen3.5-MoE", ("qwen3_5_moe", "qwen3_5_moe_text"), hooks=QWEN3_5_HOOKS),
    Family("gpt-oss", ("gpt_oss",)),
    Family("GPT-2", ("gpt2",), decoder=("transformer",), blocks="h", final_norm="ln_f", embed_tokens="wte",
           embed_positions="wpe", rotary=None, attention="attn", hooks=GPT2_HOOKS),
    Family("GPT-NeoX/Pythia", ("gpt_neox",), decoder=("gpt_neox",), final_norm="final_layer_norm",
           embed_tokens="embed_in", attention="attention", hooks=NEOX_HOOKS, parallel_residual="use_parallel_residual"),
)
"""Every family the patch engine runs on (both paths; fast = naive tested on a tiny model of each; the README's
table of families says which SAE releases each serves)."""

_BY_TYPE = {t: f for f in FAMILIES for t in f.model_types}


def _alternatives(names: Any) -> str:
    return "|".join(re.escape(n) for n in sorted(set(names)))


BLOCK_PATH = (rf"(?:(?:{_alternatives(p for f in FAMILIES for d in f.decoder for p in d.split('.'))})\.)*"
              rf"(?:{_alternatives(f.blocks for f in FAMILIES)})\.(\d+)")
"""A regex of block L's module path in any family (``model.layers.L``, ``model.language_model.layers.L``,
``transformer.h.L``, ``gpt_neox.layers.L``, a bare ``layers.L``; group 1 is L), from the rows above: what
SAELens' ``hf_hook_name`` and sparsify's hookpoints are read against (``causal_kl.hooks``, ``causal_kl.sae_format``)."""
EMBED_TOKENS = tuple(sorted({f.embed_tokens for f in FAMILIES}))
"""The families' names of the token embedding (``embed_tokens``, ``embed_in``, ``wte``)."""


def supported() -> str:
    """The families, for error messages: ``Gemma-3, Gemma-2, ...``."""
    return ", ".join(f.name for f in FAMILIES)


def family_for(model_type: str | None) -> Family | None:
    """The family of a config's ``model_type`` (None when causal-kl does not patch it)."""
    return _BY_TYPE.get(model_type) if model_type else None


ENCODERS = frozenset({"albert", "bert", "camembert", "deberta", "deberta-v2", "distilbert", "electra", "ernie",
                      "modernbert", "roberta", "xlm-roberta", "xlm-roberta-xl"})
"""model_types of encoders that transformers can still build as a ``*LMHeadModel``/``*ForCausalLM``."""


def _kind(model_config: dict) -> str:
    """What a refused model is, as far as its config.json tells: an encoder-decoder, an encoder, or unknown."""
    archs = model_config.get("architectures") or []
    if model_config.get("is_encoder_decoder"):
        return "an encoder-decoder"
    if model_config.get("model_type") in ENCODERS:
        return "an encoder"
    if any(a.endswith(("ForMaskedLM", "ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering"))
           or a.endswith("Model") and not a.endswith("LMHeadModel") for a in archs):
        return "an encoder or a base model without an LM head"
    return "a block layout causal-kl does not know"


def check_family(model_config: dict, where: str, model: str) -> Family:
    """The family of a model from its config.json (a dict); one line naming the model, its class and the
    families we patch when it has none. ``where``: the file to name (``.../config.json``)."""
    model_type = model_config.get("model_type")
    family = family_for(model_type)
    text = model_config.get("text_config")
    if family is None and isinstance(text, dict):
        family = family_for(text.get("model_type"))
    if family is not None:
        return family
    archs = model_config.get("architectures") or ["?"]
    raise CausalKLError(  # the field read to decide: model_type (architectures only where a config has none)
        where, "model_type" if model_type else "architectures",
        f"{model} is {archs[0]} ('{model_type}'), {_kind(model_config)}: causal-kl patches decoder-only causal LMs of the "
        f"families {supported()}",
        "point model.path at a model of one of those families",
    )


def hook_modules(family: Family, model_config: Any) -> dict[str, HookModule | None]:
    """The hooks a model has, each with the module of a block that holds it (None for ``resid_post``: the block
    itself). ``model_config``: the (text) config, a dict (config.json) or a transformers config object."""
    get = model_config.get if isinstance(model_config, dict) else (lambda k, d=None: getattr(model_config, k, d))
    hooks: dict[str, HookModule | None] = {RESID_POST: None, **family.hooks}
    if family.parallel_residual and get(family.parallel_residual, True):
        hooks.pop("resid_mid", None)
    return hooks


def check_hook(family: Family, model_config: Any, hook: str, where: str, field_name: str, model: str) -> HookModule | None:
    """The module holding ``hook`` in this model's blocks; one line naming the hooks it has when it lacks it."""
    hooks = hook_modules(family, model_config)
    if hook not in hooks:
        have = ", ".join(f"{h} (blocks.L.{TL_NAME[h]})" for h in hooks)
        why = (" (its blocks run attention and MLP in parallel on the block's input: there is no residual between them)"
               if hook == "resid_mid" and family.parallel_residual else "")
        if hook == "attn_z" and any("linear_attn" in where.module for where in family.hooks.values()):
            why = " (its linear-attention blocks have no attention heads, and its full-attention blocks gate theirs)"
        raise CausalKLError(where, field_name, f"{model} ({family.name}) has no hook {hook}{why}",
                            f"use one of its hooks: {have}")
    return hooks[hook]


def layer_types(text_config: Any, n_layers: int) -> list[str] | None:
    """Each block's attention type: the config's ``layer_types``; every block sliding when it has a
    ``sliding_window`` and no ``layer_types`` (Mistral); None (every block global) otherwise."""
    types = getattr(text_config, "layer_types", None)
    if types:
        return list(types)
    if getattr(text_config, "sliding_window", None) is not None:
        return ["sliding_attention"] * n_layers
    return None


def resolve(module: Any, dotted: str) -> Any:
    """``module.a.b`` for ``"a.b"``; None where any step is missing. ``"a.b|c.d"``: the first of them found."""
    if "|" in dotted:
        return next((m for m in (resolve(module, d) for d in dotted.split("|")) if m is not None), None)
    for part in dotted.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


# ----------------------------------------------------------------------------- attention implementations
AUTO = "auto"
"""``model.attn_implementation: auto``: sdpa where transformers has it for the model's class, else eager."""


def offered_attn_implementations(model_class: Any) -> list[str]:
    """The attention implementations transformers offers for a model class (its ``_supports_*`` flags)."""
    offered = ["eager"]
    if getattr(model_class, "_supports_sdpa", False):
        offered.append("sdpa")
    if getattr(model_class, "_supports_flash_attn", False):
        offered += ["flash_attention_2", "flash_attention_3"]
    if getattr(model_class, "_supports_flex_attn", False):
        offered.append("flex_attention")
    return offered


def choose_attn_implementation(model_class: Any, requested: str | None, where: str) -> str:
    """The implementation to load ``model_class`` with: ``auto`` (or None) -> sdpa where offered, else eager;
    anything else must be offered (one line naming the class and what it offers)."""
    offered = offered_attn_implementations(model_class)
    if requested in (None, AUTO):
        return "sdpa" if "sdpa" in offered else "eager"
    if requested not in offered:
        import transformers

        raise CausalKLError(
            where, "model.attn_implementation",
            f"{model_class.__name__} does not offer attn_implementation '{requested}' in transformers {transformers.__version__} "
            f"(it offers {', '.join(offered)})",
            f"set model.attn_implementation to one of {', '.join(offered)}, or to auto",
        )
    return requested


def causal_lm_class(model_config: dict) -> Any | None:
    """The class ``AutoModelForCausalLM`` builds for a config.json (imports transformers; None if it has none)."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_config.get("model_type"))
    return getattr(transformers, name, None) if name else None
