"""Route kind ``nla_av``: the NLA round trip from golds (AV verbaliser -> explanations -> ``nla_ar``).

Verbaliser checkpoint (HF format) with ``nla_meta.yaml``: ``kind: nla_model``, ``role: av``
(or ``actor``), ``d_model``, ``tokens.injection_char``, ``tokens.injection_token_id``,
``tokens.injection_left_neighbor_id``, ``tokens.injection_right_neighbor_id``,
``extraction.injection_scale`` and ``prompt_templates.av`` (or ``.actor``) with ``{injection_char}``.

Per gold: the chat-templated prompt's embeddings are looked up with the model's own input
embedding module, which is what its forward applies to ``input_ids`` (Gemma's
``Gemma3TextScaledWordEmbedding`` already multiplies by sqrt(d); nothing is scaled twice). The
gold, rescaled to L2 norm ``injection_scale``, overwrites the embedding at the injection token
(found by its id and verified by both neighbour ids); ``generate`` runs from ``inputs_embeds`` and
the text between ``<explanation>`` tags is kept. The explanations feed ``nla_ar`` (``ar_checkpoint``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from causal_kl.errors import CausalKLError
from causal_kl.models import LoadedModel, load_model
from causal_kl.routes.nla_meta import META_FILE, check_width, meta_field, read_meta, template

EXPLANATION_RE = re.compile(r"<explanation>(.*?)(?:</explanation>|$)", re.S)


@dataclass
class AVModel:
    loaded: LoadedModel
    prompt_ids: list[int]  # the chat-templated prompt, one injection token
    injection_position: int
    injection_scale: float
    checkpoint: str


def chat_prompt_ids(tokenizer: Any, content: str, checkpoint: str | Path) -> list[int]:
    """Token ids of ``content`` as one user turn, with the generation prompt (the template adds BOS)."""
    if not getattr(tokenizer, "chat_template", None):
        raise CausalKLError(checkpoint, "tokenizer chat_template", "the AV tokenizer has no chat template",
                            "restore the checkpoint's tokenizer_config.json / chat_template.jinja")
    enc = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=True, add_generation_prompt=True)
    ids = enc["input_ids"] if hasattr(enc, "keys") else enc
    return [int(i) for i in ids]


def find_injection(ids: list[int], token_id: int, left_id: int, right_id: int, checkpoint: str | Path) -> int:
    """The one position holding ``token_id`` between ``left_id`` and ``right_id``."""
    found = [p for p in range(1, len(ids) - 1)
             if ids[p] == token_id and ids[p - 1] == left_id and ids[p + 1] == right_id]
    if len(found) != 1:
        raise CausalKLError(Path(checkpoint) / META_FILE, "tokens",
                            f"found {len(found)} injection tokens {token_id} between neighbours {left_id} and {right_id} in the prompt",
                            "use the AV's own tokenizer and template (injection_char, its id and neighbour ids must match)")
    return found[0]


def load_av(checkpoint: str | Path, d: int, dtype: str = "float32", device: str = "cpu") -> AVModel:
    """Load and check an AV checkpoint; build its prompt and locate the injection token."""
    meta = read_meta(checkpoint, ("av", "actor"))
    check_width(meta, checkpoint, d)
    char = meta_field(meta, "tokens.injection_char", checkpoint, str)
    token_id = int(meta_field(meta, "tokens.injection_token_id", checkpoint, int))
    left = int(meta_field(meta, "tokens.injection_left_neighbor_id", checkpoint, int))
    right = int(meta_field(meta, "tokens.injection_right_neighbor_id", checkpoint, int))
    scale = float(meta_field(meta, "extraction.injection_scale", checkpoint, (int, float)))
    tmpl = template(meta, ("av", "actor"), "injection_char", checkpoint)
    loaded = load_model(checkpoint, dtype=dtype, device=device)
    if loaded.d_model != d:
        raise CausalKLError(Path(checkpoint) / "config.json", "hidden_size", f"{loaded.d_model} != the run's model width {d}",
                            "use the AV trained on the run's model")
    ids = chat_prompt_ids(loaded.tokenizer, tmpl.format(injection_char=char), checkpoint)
    pos = find_injection(ids, token_id, left, right, checkpoint)
    return AVModel(loaded=loaded, prompt_ids=ids, injection_position=pos, injection_scale=scale, checkpoint=str(checkpoint))


def injected_embeddings(av: AVModel, gold: np.ndarray) -> torch.Tensor:
    """Prompt embeddings with each gold (rescaled to ``injection_scale``) at the injection token: ``[n, T, d]``."""
    loaded = av.loaded
    ids = torch.tensor([av.prompt_ids], dtype=torch.long, device=loaded.device)
    embeds = loaded.model.get_input_embeddings()(ids)  # [1, T, d], as the forward would embed input_ids
    g = torch.from_numpy(np.asarray(gold, dtype=np.float32)).to(loaded.device)
    v = g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12) * av.injection_scale
    embeds = embeds.repeat(len(gold), 1, 1)
    embeds[:, av.injection_position] = v.to(embeds.dtype)
    return embeds


def extract_explanation(text: str) -> str:
    """The text between ``<explanation>`` tags (to the end when the closing tag is missing), else all of it."""
    m = EXPLANATION_RE.search(text)
    return (m.group(1) if m else text).strip()


@torch.no_grad()
def explain(av: AVModel, gold: np.ndarray, max_new_tokens: int = 64, do_sample: bool = False,
            temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, batch_size: int = 16,
            progress: bool = False) -> list[str]:
    """Generated text for each gold ``[n, d]`` (the full generation; see ``extract_explanation``).

    Greedy by default; with ``do_sample`` each batch is seeded with ``seed + index of its first gold``.
    """
    from tqdm import tqdm

    model, tok = av.loaded.model, av.loaded.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    texts: list[str] = []
    for start in tqdm(range(0, len(gold), batch_size), desc="nla_av", unit="batch", disable=not progress):
        embeds = injected_embeddings(av, gold[start:start + batch_size])
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=pad)
        if do_sample:
            torch.manual_seed(seed + start)
            kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
        out = model.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)  # [b, new tokens]
        texts += tok.batch_decode(out, skip_special_tokens=True)
    return texts
