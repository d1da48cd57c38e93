"""Loading a causal LM and finding the parts the patch engine needs.

One loader serves text-only checkpoints (the demo's Gemma-3, Llama/Qwen-style models) and
the multimodal ``Gemma3ForConditionalGeneration`` of google/gemma-3-27b-it, whose text
decoder sits under ``model.language_model``. What the rest of the package sees is a
``LoadedModel``: the decoder blocks, the final norm, the LM head, the rotary module, the
final-logit soft-cap, and the text config.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from causal_kl.errors import CausalKLError

DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}


@dataclass
class LoadedModel:
    """A causal LM and handles on its parts.

    ``layers[i]`` is decoder block i; the design's layer L is the output of ``layers[L]``.
    """

    model: nn.Module
    decoder: nn.Module  # the text decoder: embed_tokens, layers, norm, rotary_emb
    layers: nn.ModuleList
    final_norm: nn.Module
    lm_head: nn.Module
    embed_tokens: nn.Module
    rotary_emb: nn.Module | None
    text_config: Any
    architecture: str
    path: str
    tokenizer: Any = None
    layer_types: list[str] | None = None
    final_logit_softcapping: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def d_model(self) -> int:
        return int(self.text_config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def sliding_window(self) -> int | None:
        return getattr(self.text_config, "sliding_window", None)

    def layer_type(self, i: int) -> str:
        return self.layer_types[i] if self.layer_types else "full_attention"

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm, LM head and (where the model's own forward applies it) soft-cap: ``[..., d] -> [..., vocab]``."""
        out = self.lm_head(self.final_norm(hidden))
        if self.final_logit_softcapping is not None:
            cap = self.final_logit_softcapping
            out = torch.tanh(out / cap) * cap
        return out

    def check_layer(self, layer: int, source: str = "config") -> None:
        if not 0 <= layer < self.n_layers:
            raise CausalKLError(
                source, "model.layer",
                f"layer {layer} is out of range for {self.path} ({self.n_layers} decoder blocks, 0..{self.n_layers - 1})",
                f"set model.layer to a block index below {self.n_layers}",
            )



def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise CausalKLError("config", "device", "cuda was asked for but no CUDA device is visible",
                            "set device: cpu or auto, or run on a GPU node")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise CausalKLError("config", "dtype", f"unknown dtype {dtype!r}", f"use one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def _read_model_config(path: str) -> dict | None:
    cfg = Path(path) / "config.json"
    if cfg.exists():
        try:
            return json.loads(cfg.read_text())
        except json.JSONDecodeError as e:
            raise CausalKLError(cfg, None, f"not valid JSON ({e})", "re-save the model with save_pretrained") from e
    return None


def load_model(
    path: str | Path,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    attn_implementation: str = "sdpa",
    with_tokenizer: bool = True,
) -> LoadedModel:
    """Load a causal LM checkpoint (local directory or hub id) for patching; eval mode, no grad."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    path = str(path)
    local = Path(path).exists()
    if local and not (Path(path) / "config.json").exists():
        raise CausalKLError(path, "config.json", "not a Hugging Face model directory",
                            "point model.path at a folder written by save_pretrained (config.json + weights)")
    try:
        hf_config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise CausalKLError(path, "model.path", f"cannot read a model config ({str(e).splitlines()[0]})",
                            "give a local save_pretrained folder, or a hub id with network access") from e
    model_type = getattr(hf_config, "model_type", None)
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise CausalKLError(
            path, "config.json model_type",
            f"'{model_type}' ({(getattr(hf_config, 'architectures', None) or ['?'])[0]}) is not a causal language model",
            "point model.path at a decoder-only causal LM (Gemma-3, Llama, Qwen2, ...)",
        )
    torch_dtype = resolve_dtype(dtype)
    dev = resolve_device(device) if isinstance(device, str) else device
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, attn_implementation=attn_implementation)
    model.to(dev).eval()
    model.requires_grad_(False)
    loaded = wrap_model(model, path)
    if with_tokenizer:
        try:
            loaded.tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as e:
            raise CausalKLError(path, "tokenizer", f"no tokenizer found ({str(e).splitlines()[0]})",
                                "save the tokenizer beside the model (tokenizer.save_pretrained)") from e
    return loaded


def find_decoder(model: nn.Module, path: str | None = None) -> nn.Module:
    """The module holding ``layers``/``norm``/``embed_tokens``: model.model, or model.model.language_model."""
    candidates = []
    inner = getattr(model, "model", None)
    if inner is not None:
        candidates += [getattr(inner, "language_model", None), getattr(inner, "text_model", None), inner]
    candidates += [getattr(model, "language_model", None), model]
    for c in candidates:
        if c is not None and isinstance(getattr(c, "layers", None), nn.ModuleList) and hasattr(c, "norm"):
            return c
    raise CausalKLError(path, "architecture", f"cannot find the decoder blocks of {type(model).__name__}",
                        "use a decoder-only transformers model whose decoder has .layers and .norm (Gemma-3, Llama, Qwen2, ...)")


def wrap_model(model: nn.Module, path: str = "<in memory>") -> LoadedModel:
    """Find the parts of an already-built HF causal LM."""
    decoder = find_decoder(model, path)
    lm_head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if lm_head is None:
        lm_head = getattr(model, "lm_head", None)
    if lm_head is None:
        raise CausalKLError(path, "lm_head", f"{type(model).__name__} has no LM head", "load a *ForCausalLM checkpoint")
    text_config = getattr(decoder, "config", None) or model.config
    if hasattr(text_config, "get_text_config"):
        text_config = text_config.get_text_config()
    # the final soft-cap lives in the outer model's forward; read it from the text config
    softcap = getattr(text_config, "final_logit_softcapping", None)
    layer_types = getattr(text_config, "layer_types", None)
    loaded = LoadedModel(
        model=model,
        decoder=decoder,
        layers=decoder.layers,
        final_norm=decoder.norm,
        lm_head=lm_head,
        embed_tokens=decoder.embed_tokens,
        rotary_emb=getattr(decoder, "rotary_emb", None),
        text_config=text_config,
        architecture=type(model).__name__,
        path=path,
        layer_types=list(layer_types) if layer_types else None,
        final_logit_softcapping=softcap,
    )
    calibrate_head(loaded)
    return loaded


@torch.no_grad()
def calibrate_head(loaded: LoadedModel, n_tokens: int = 6) -> None:
    """Make ``loaded.logits`` reproduce the model's own final logits.

    The final-logit soft-cap is applied by some wrappers' forward and not by others
    (transformers' Gemma3ForCausalLM applies ``final_logit_softcapping``; its multimodal
    Gemma3ForConditionalGeneration does not). Rather than trust the config, one short forward
    decides: the model's logits are compared with the head applied to the decoder's output,
    with and without the cap. Any other post-processing is an error naming the architecture.
    """
    vocab = int(getattr(loaded.text_config, "vocab_size", 2))
    x = (torch.arange(n_tokens, device=loaded.device) * 7919 % max(vocab - 1, 1) + 1)[None]
    ref = loaded.model(input_ids=x, use_cache=False).logits.float()
    normed = loaded.decoder(input_ids=x, use_cache=False).last_hidden_state
    raw = loaded.lm_head(normed).float()
    options = {None: raw}
    cap = loaded.final_logit_softcapping
    if cap is not None:
        options[cap] = torch.tanh(raw / cap) * cap
    errs = {k: float((v - ref).abs().max()) for k, v in options.items()}
    best = min(errs, key=errs.get)
    scale = float(ref.abs().max()) + 1e-6
    tol = 1e-3 if loaded.dtype in (torch.float32, torch.float64) else 5e-2
    if errs[best] > tol * max(scale, 1.0):
        raise CausalKLError(loaded.path, "architecture",
                            f"{loaded.architecture}'s final logits are not norm -> LM head (-> soft-cap) of its decoder (off by {errs[best]:.3g})",
                            "set patch.method: naive for this model")
    loaded.final_logit_softcapping = best
