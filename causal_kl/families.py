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
- GPT-NeoX / Pythia: ``gpt_neox.layers``, ``gpt_neox.final_layer_norm``, ``gpt_neox.embed_in``,
  ``gpt_neox.rotary_emb`` (partial rotary: the attention rotates the first ``rotary_pct`` of each head),
  ``block.attention``; parallel residual ``x + attn(ln1(x)) + mlp(ln2(x))`` inside the block.

Sliding windows: a config's ``layer_types`` says which blocks slide; a config with a
``sliding_window`` and no ``layer_types`` (Mistral) slides in every block, as transformers' Mistral
builds its mask (``create_sliding_window_causal_mask`` whenever ``sliding_window`` is set).

Torch-free at import: the parse-time checks (``causal_kl.checks``) read it from ``config.json`` alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from causal_kl.errors import CausalKLError


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


FAMILIES: tuple[Family, ...] = (
    Family("Gemma-3", ("gemma3", "gemma3_text")),
    Family("Gemma-2", ("gemma2",)),
    Family("Llama", ("llama",)),
    Family("Mistral", ("mistral",)),
    Family("Qwen2", ("qwen2",)),
    Family("Qwen3", ("qwen3",)),
    Family("GPT-2", ("gpt2",), decoder=("transformer",), blocks="h", final_norm="ln_f", embed_tokens="wte",
           embed_positions="wpe", rotary=None, attention="attn"),
    Family("GPT-NeoX/Pythia", ("gpt_neox",), decoder=("gpt_neox",), final_norm="final_layer_norm",
           embed_tokens="embed_in", attention="attention"),
)
"""Every family the patch engine runs on (both paths; fast = naive tested on a tiny model of each; the README's
table of families says which SAE releases each serves)."""

_BY_TYPE = {t: f for f in FAMILIES for t in f.model_types}


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
    raise CausalKLError(
        where, "architectures",
        f"{model} is {archs[0]} ('{model_type}'), {_kind(model_config)}: causal-kl patches decoder-only causal LMs of the "
        f"families {supported()}",
        "point model.path at a model of one of those families",
    )


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
    """``module.a.b`` for ``"a.b"``; None where any step is missing."""
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
