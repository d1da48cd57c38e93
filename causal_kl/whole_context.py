"""SAELens-comparable whole-context scores: ``kl_div_score`` and ``ce_loss_score``.

These sit beside the pipeline's own per-site numbers, labelled as SAELens', and follow the
definitions of ``sae_lens/evals.py`` (read at sae-lens 6.54.12: ``get_recons_loss``,
``get_downstream_reconstruction_metrics``, ``_kl``; ``get_special_token_ids`` in
``sae_lens/util.py``; contexts as ``concat_and_batch_sequences`` in
``sae_lens/tokenization_and_batching.py`` builds them):

* Each context of ``n_ctx`` tokens runs three times through the model's own forward: clean; with
  the output of block ``L`` (SAELens' ``blocks.L.hook_resid_post``) replaced by its
  reconstruction at **every** position at once (``route``); and with it replaced by zeros
  (``zero``).
* Special tokens: SAELens' ``run_evals`` ignores the ids of the tokenizer's ``bos_token_id``,
  ``eos_token_id``, ``pad_token_id``, ``sep_token_id``, ``decoder_start_token_id``
  (``special_token_ids`` here). The route hook keeps the clean activation at positions holding
  such a token (``torch.where(mask, reconstruction, activation)``); the zero-ablation hook zeroes
  **every** position, special ones included (``standard_zero_ablate_hook`` ignores the mask).
* Per position ``t``: ``KL_t = sum_v p_clean(v) (log p_clean(v) - log p_patched(v))`` from the
  final logits (``_kl``: ``kl_div(log_softmax(new), softmax(orig)).sum(-1)``); ``CE_t = -log
  p(token[t+1])`` for ``t < n_ctx - 1`` (TransformerLens' ``loss_per_token``).
* Which positions count: KL at every ``t`` whose own token is not special; CE at ``t < n_ctx -
  1`` whose own (input) token is not special (the mask trimmed by its last column), whatever
  the predicted token is.
* Averaging: per token. The kept values of all contexts and batches are concatenated and
  averaged once (``torch.cat(metric_values).mean()``), not a mean of per-batch means.
* ``kl_div_score = (KL_zero - KL_route) / KL_zero``;
  ``ce_loss_score = (CE_zero - CE_route) / (CE_zero - CE_clean)``.

SAELens' names for the returned values: ``kl_route`` = ``kl_div_with_sae``, ``kl_zero`` =
``kl_div_with_ablation``, ``ce_clean`` = ``ce_loss_without_sae``, ``ce_route`` =
``ce_loss_with_sae``, ``ce_zero`` = ``ce_loss_with_ablation``. The logits are the model's own
(Gemma's final soft-cap included); log-softmax, KL and CE are computed in float32.
"""

from __future__ import annotations

import random
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch.nn import functional as F

from causal_kl.hooks import RESID_POST
from causal_kl.models import LoadedModel, at_hook

SPECIAL_TOKEN_ATTRS = ("bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id")
"""The tokenizer attributes SAELens' ``get_special_token_ids`` reads (chat-template tokens are not among them)."""

Reconstruct = Callable[[torch.Tensor], torch.Tensor]
"""``[n, d_model]`` float32 hidden states -> ``[n, d_model]`` reconstructions."""


def special_token_ids(tokenizer) -> set[int]:
    """SAELens' ``get_special_token_ids``: the ids of the tokenizer's BOS, EOS, PAD, SEP and decoder-start tokens."""
    ids = set()
    for attr in SPECIAL_TOKEN_ATTRS:
        token_id = getattr(tokenizer, attr, None)
        if token_id is not None:
            ids.add(int(token_id))
    return ids


# ------------------------------------------------------------------------------ contexts
def pack_contexts(documents: Iterable[Sequence[int]], n_ctx: int, bos_id: int | None,
                  separator_id: int | None = None) -> Iterator[list[int]]:
    """Contexts of ``n_ctx`` tokens as SAELens packs a token stream (``concat_and_batch_sequences``
    with ``begin_batch_token_id=bos_id``, ``sequence_separator_token_id=separator_id``, no
    begin-sequence token; SAELens' defaults set both to BOS).

    Documents are concatenated; every context starts with ``bos_id`` (added unless the next
    token already is it); where a new document continues a context, ``separator_id`` is put
    between them (unless the document starts with it); a last, incomplete context is dropped.
    Documents may be given with or without their leading BOS.
    """
    if n_ctx <= 0:
        raise ValueError("n_ctx must be positive")
    current: list[int] | None = None
    for doc in documents:
        tokens = [int(t) for t in doc]
        offset = 0
        while offset < len(tokens):
            first = tokens[offset]
            if current is None:
                prefix = [bos_id] if bos_id is not None and first != bos_id else []
                take = max(n_ctx - len(prefix), 0)
                current = (prefix + tokens[offset:offset + take])[:n_ctx]
            else:
                prefix = [separator_id] if separator_id is not None and offset == 0 and first != separator_id else []
                room = n_ctx - len(current)
                take = max(room - len(prefix), 0)
                current = current + prefix[:room] + tokens[offset:offset + take]
            offset += take
            if len(current) == n_ctx:
                yield current
                current = None


_BOS = object()


def draw_contexts(documents: Sequence[Sequence[int]], n_ctx: int, n_contexts: int, seed: int,
                  bos_id: int | None, separator_id: int | None | object = _BOS) -> list[list[int]]:
    """Up to ``n_contexts`` contexts of ``n_ctx`` tokens: the documents in an order shuffled by
    ``random.Random(seed)`` (SAELens shuffles its dataset with a seed), packed by
    ``pack_contexts``, the first ``n_contexts`` kept. Deterministic for a seed.
    ``separator_id`` defaults to ``bos_id`` (SAELens' default ``sequence_separator_token="bos"``).

    Documents that give fewer contexts give all they have, each once (the caller says so): SAELens' activation
    store would start the dataset over and score some contexts twice.
    """
    sep = bos_id if separator_id is _BOS else separator_id
    order = list(range(len(documents)))
    random.Random(seed).shuffle(order)
    out = []
    for ctx in pack_contexts((documents[i] for i in order), n_ctx, bos_id, sep):
        out.append(ctx)
        if len(out) == n_contexts:
            break
    return out


# --------------------------------------------------------------------------------- scores
def _kl_per_position(logp_clean: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(clean || patched) per position: ``[batch, seq, vocab]`` x2 -> ``[batch, seq]``."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return F.kl_div(logp, logp_clean, log_target=True, reduction="none").sum(dim=-1)


def _ce_per_position(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """``-log p(token[t+1])`` at ``t < seq - 1``: ``[batch, seq, vocab]`` -> ``[batch, seq - 1]``."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return -logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)


@torch.no_grad()
def whole_context_scores(loaded: LoadedModel, contexts: Sequence[Sequence[int]] | torch.Tensor, layer: int,
                         reconstruct: Reconstruct, special_ids: Iterable[int], batch_size: int = 8,
                         hook: str = RESID_POST) -> dict[str, float | int]:
    """SAELens' ``kl_div_score`` and ``ce_loss_score`` of ``reconstruct`` spliced at layer ``layer`` (at ``hook`` of
    block ``layer``, ``models.at_hook``: the hook's activations, of its width, are reconstructed and zeroed).

    ``contexts``: ``[n_contexts, n_ctx]`` token ids (all of one length; ``draw_contexts`` makes
    them). ``reconstruct``: ``[n, d_model]`` float32 hidden states on the model's device ->
    ``[n, d_model]`` (e.g. ``SparseAutoencoder.reconstruct``); it is given the non-special
    positions of a batch at once. ``special_ids``: token ids left out (``special_token_ids``).
    ``batch_size`` contexts run together (peak memory ~ 3 x batch x n_ctx x vocab floats).

    Returns ``ce_clean``, ``ce_route``, ``ce_zero``, ``kl_route``, ``kl_zero`` (nats, means per
    token), ``kl_div_score``, ``ce_loss_score``, ``n_tokens_kl``, ``n_tokens_ce``,
    ``n_contexts``, ``n_ctx``, ``layer``.
    """
    loaded.check_layer(layer, "whole_context_scores")
    device = loaded.device
    ids = torch.as_tensor([list(map(int, c)) for c in contexts] if not isinstance(contexts, torch.Tensor) else contexts,
                          dtype=torch.long)
    if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] < 2:
        raise ValueError(f"contexts must be [n_contexts, n_ctx >= 2] token ids of one length, got shape {tuple(ids.shape)}")
    special = torch.tensor(sorted({int(t) for t in special_ids}), dtype=torch.long)
    sums = {"kl_route": [], "kl_zero": [], "ce_clean": [], "ce_route": [], "ce_zero": []}

    for start in range(0, len(ids), batch_size):
        batch = ids[start:start + batch_size].to(device)  # [batch, seq]
        keep = ~torch.isin(batch, special.to(device))  # [batch, seq]: positions that are not special tokens

        def route(hidden: torch.Tensor) -> torch.Tensor:  # [batch, seq, d_model]
            recon = reconstruct(hidden[keep].float())  # [n_keep, d_model]
            if tuple(recon.shape) != (int(keep.sum()), hidden.shape[-1]):
                raise ValueError(f"reconstruct returned {tuple(recon.shape)} for {int(keep.sum())} vectors of width {hidden.shape[-1]}")
            out = hidden.clone()
            out[keep] = recon.to(device=hidden.device, dtype=hidden.dtype)
            return out

        def zero(hidden: torch.Tensor) -> torch.Tensor:
            return torch.zeros_like(hidden)

        clean_logits = loaded.model(input_ids=batch, use_cache=False).logits  # [batch, seq, vocab]
        logp_clean = torch.log_softmax(clean_logits.float(), dim=-1)
        sums["ce_clean"].append(_ce_per_position(clean_logits, batch)[keep[:, :-1]])
        del clean_logits
        for name, replace in (("route", route), ("zero", zero)):
            with at_hook(loaded, layer, hook, replace):
                logits = loaded.model(input_ids=batch, use_cache=False).logits
            sums[f"kl_{name}"].append(_kl_per_position(logp_clean, logits)[keep])
            sums[f"ce_{name}"].append(_ce_per_position(logits, batch)[keep[:, :-1]])
            del logits

    means = {k: float(torch.cat(v).double().mean()) for k, v in sums.items()}
    kl_zero, ce_zero = means["kl_zero"], means["ce_zero"]
    return {
        **means,
        "kl_div_score": (kl_zero - means["kl_route"]) / kl_zero if kl_zero != 0 else float("nan"),
        "ce_loss_score": (ce_zero - means["ce_route"]) / (ce_zero - means["ce_clean"]) if ce_zero != means["ce_clean"] else float("nan"),
        "n_tokens_kl": int(sum(len(v) for v in sums["kl_route"])),
        "n_tokens_ce": int(sum(len(v) for v in sums["ce_route"])),
        "n_contexts": int(ids.shape[0]),
        "n_ctx": int(ids.shape[1]),
        "layer": int(layer),
    }
