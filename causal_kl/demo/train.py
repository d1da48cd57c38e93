"""The demo model: a tiny Gemma-3 (``Gemma3ForCausalLM``) trained briefly on the demo corpus.

Sliding-window and global layers (``layer_types``) with a window shorter than the documents,
final-logit soft-capping 30, Gemma's special-token ids. Trained for a fixed number of steps
on the model-training rows (seeded, fixed thread count: two builds give the same weights),
then scored on the held-out rows against two count baselines fitted on the same training
tokens: an add-one unigram and a bigram interpolated with it (weight tuned on a split of the
training documents, never on the held-out ones). Saved with ``save_pretrained`` (config.json,
model.safetensors, tokenizer files), so it loads exactly like a hub checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from causal_kl.errors import CausalKLError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the demo Gemma-3 (``demo.model`` in the config)."""

    hidden_size: int = 160
    intermediate_size: int = 640
    num_hidden_layers: int = 6
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 40
    sliding_window: int = 128
    sliding_per_global: int = 2  # layer pattern: this many sliding layers, then one global, repeated
    final_logit_softcapping: float = 30.0
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False  # Gemma ties them; untied, the head learns bigram statistics sooner


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation of the demo model (``demo.train`` in the config)."""

    steps: int = 400
    batch_size: int = 4
    seq_len: int = 512
    lr: float = 6e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 30
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    threads: int = 2
    log_every: int = 25


@dataclass(frozen=True)
class DataSplit:
    """Corpus rows: held-out eval rows and model-training rows (stop None = to the end)."""

    eval_rows: tuple[int, int] = (0, 50)
    train_start: int = 250  # model (and tokenizer) training rows run from here to the end; 50-250 train routes
    eval_max_length: int = 512  # held-out documents are scored on their first tokens, as the sites stage reads them
    tune_fraction: float = 0.1  # last fraction of the training documents tunes the bigram interpolation weight
    column: str = "content"

    @property
    def train_rows(self) -> tuple[int, None]:
        return (self.train_start, None)


# ---------------------------------------------------------------- count baselines


@dataclass
class NgramCounts:
    """Unigram and bigram counts over token sequences (each sequence's first token is context only)."""

    vocab_size: int
    unigram: np.ndarray  # [vocab] count of each token as a prediction target
    pair_keys: np.ndarray  # sorted a * vocab + b of every observed bigram (a -> b)
    pair_counts: np.ndarray  # count of each key
    context_counts: np.ndarray  # [vocab] bigrams whose context is a

    @property
    def n_targets(self) -> int:
        return int(self.unigram.sum())


def fit_counts(sequences: Sequence[Sequence[int]], vocab_size: int) -> NgramCounts:
    """Count every (previous token, token) pair and every target token in ``sequences``."""
    prev, nxt = _pairs(sequences)
    keys, counts = np.unique(prev * vocab_size + nxt, return_counts=True)
    return NgramCounts(
        vocab_size=vocab_size,
        unigram=np.bincount(nxt, minlength=vocab_size).astype(np.float64),
        pair_keys=keys,
        pair_counts=counts.astype(np.float64),
        context_counts=np.bincount(prev, minlength=vocab_size).astype(np.float64),
    )


def _pairs(sequences: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    prev = [np.asarray(s[:-1], dtype=np.int64) for s in sequences if len(s) > 1]
    nxt = [np.asarray(s[1:], dtype=np.int64) for s in sequences if len(s) > 1]
    if not prev:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(prev), np.concatenate(nxt)


def unigram_probs(counts: NgramCounts) -> np.ndarray:
    """Add-one unigram ``[vocab]``: (c(b) + 1) / (N + V)."""
    return (counts.unigram + 1.0) / (counts.n_targets + counts.vocab_size)


def unigram_loss(counts: NgramCounts, sequences: Sequence[Sequence[int]]) -> float:
    """Mean -log p_unigram over the targets of ``sequences`` (nats/token)."""
    _, nxt = _pairs(sequences)
    return float(-np.log(unigram_probs(counts)[nxt]).mean())


def bigram_loss(counts: NgramCounts, sequences: Sequence[Sequence[int]], lam: float) -> float:
    """Mean -log p over the targets of ``sequences`` (nats/token) under the interpolated bigram.

    p(b | a) = lam * c(a, b) / c(a) + (1 - lam) * p_unigram(b); contexts never seen use p_unigram(b).
    """
    prev, nxt = _pairs(sequences)
    return float(-np.log(_bigram_probs(counts, prev, nxt, lam)).mean())


def _bigram_probs(counts: NgramCounts, prev: np.ndarray, nxt: np.ndarray, lam: float) -> np.ndarray:
    keys = prev * counts.vocab_size + nxt
    pair = np.zeros(len(keys))
    if len(counts.pair_keys):
        idx = np.minimum(np.searchsorted(counts.pair_keys, keys), len(counts.pair_keys) - 1)
        found = counts.pair_keys[idx] == keys
        pair[found] = counts.pair_counts[idx[found]]
    ctx = counts.context_counts[prev]
    p_uni = unigram_probs(counts)[nxt]
    p_ml = np.divide(pair, ctx, out=np.zeros_like(pair), where=ctx > 0)
    return np.where(ctx > 0, lam * p_ml + (1.0 - lam) * p_uni, p_uni)


def tune_lambda(fit: Sequence[Sequence[int]], tune: Sequence[Sequence[int]], vocab_size: int,
                grid: Sequence[float] | None = None) -> float:
    """The interpolation weight minimising the bigram loss on ``tune`` with counts fitted on ``fit``."""
    counts = fit_counts(fit, vocab_size)
    grid = list(grid) if grid is not None else [i / 100 for i in range(1, 100)]
    losses = [bigram_loss(counts, tune, lam) for lam in grid]
    return float(grid[int(np.argmin(losses))])


def baseline_losses(train: Sequence[Sequence[int]], heldout: Sequence[Sequence[int]], vocab_size: int,
                    tune_fraction: float = 0.1) -> dict[str, float]:
    """Held-out unigram and interpolated-bigram losses (nats/token) fitted on ``train``.

    The interpolation weight is tuned with counts from the first ``1 - tune_fraction`` of the
    training sequences, scored on the rest; the final counts use all training sequences.
    """
    n_tune = max(1, int(round(len(train) * tune_fraction)))
    if n_tune >= len(train):
        raise CausalKLError("config", "demo.data.tune_fraction", f"{len(train)} training documents leave none to fit on",
                            "use more training rows or a smaller tune_fraction")
    lam = tune_lambda(train[:-n_tune], train[-n_tune:], vocab_size)
    counts = fit_counts(train, vocab_size)
    return {
        "unigram": unigram_loss(counts, heldout),
        "bigram": bigram_loss(counts, heldout, lam),
        "bigram_lambda": lam,
        "uniform": math.log(vocab_size),
    }


# ---------------------------------------------------------------- the model


def gemma3_config(model_cfg: ModelConfig, tokenizer: Any):
    """A ``Gemma3TextConfig`` for ``model_cfg`` with the tokenizer's vocabulary and special ids."""
    from transformers import Gemma3TextConfig

    m = model_cfg
    pattern = ["sliding_attention"] * m.sliding_per_global + ["full_attention"]
    layer_types = [pattern[i % len(pattern)] for i in range(m.num_hidden_layers)]
    return Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=m.hidden_size,
        intermediate_size=m.intermediate_size,
        num_hidden_layers=m.num_hidden_layers,
        num_attention_heads=m.num_attention_heads,
        num_key_value_heads=m.num_key_value_heads,
        head_dim=m.head_dim,
        query_pre_attn_scalar=m.head_dim,
        sliding_window=m.sliding_window,
        layer_types=layer_types,
        final_logit_softcapping=m.final_logit_softcapping,
        max_position_embeddings=m.max_position_embeddings,
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=m.tie_word_embeddings,
    )


def token_stream(sequences: Sequence[Sequence[int]], eos_id: int) -> torch.Tensor:
    """Training documents (each starting with BOS) joined with EOS after each: ``[n_tokens]`` int64."""
    parts = [torch.tensor(list(s) + [eos_id], dtype=torch.long) for s in sequences]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine decay to ``lr * min_lr_ratio`` at ``steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine)


def train_model(model: torch.nn.Module, stream: torch.Tensor, cfg: TrainConfig) -> dict[str, Any]:
    """Train ``model`` in place on windows of ``stream`` for ``cfg.steps`` AdamW steps; return a summary.

    Windows of ``seq_len + 1`` tokens at stride ``seq_len``, visited in a seeded random order,
    reshuffled each epoch. Loss: mean cross-entropy of the (soft-capped) logits.
    """
    from tqdm.auto import tqdm

    torch.manual_seed(cfg.seed)
    L = cfg.seq_len
    n_windows = (len(stream) - 1) // L
    if n_windows < cfg.batch_size:
        raise CausalKLError("config", "demo.train.seq_len", f"{len(stream)} training tokens make {n_windows} windows "
                            f"of {L}, fewer than one batch of {cfg.batch_size}", "use more training rows or a shorter seq_len")
    windows = stream[: n_windows * L + 1]
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)
    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(n_windows, generator=gen)
    cursor, epoch = 0, 0
    model.train()
    t0 = time.perf_counter()
    losses: list[float] = []
    bar = tqdm(range(cfg.steps), desc="demo model", mininterval=5.0, disable=None)
    for step in bar:
        if cursor + cfg.batch_size > n_windows:
            order = torch.randperm(n_windows, generator=gen)
            cursor, epoch = 0, epoch + 1
        idx = order[cursor: cursor + cfg.batch_size]
        cursor += cfg.batch_size
        starts = idx * L
        batch = torch.stack([windows[s: s + L + 1] for s in starts.tolist()])  # [batch, L + 1]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        logits = model(input_ids=batch[:, :-1]).logits  # [batch, L, vocab], soft-capped
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            elapsed = time.perf_counter() - t0
            tok_s = (step + 1) * cfg.batch_size * L / elapsed
            bar.set_postfix(loss=f"{np.mean(losses[-cfg.log_every:]):.3f}", tok_s=f"{tok_s:.0f}")
            log.info("step %d/%d loss %.4f lr %.2e %.0f tokens/s", step + 1, cfg.steps,
                     np.mean(losses[-cfg.log_every:]), lr_at(step, cfg), tok_s)
    model.eval()
    seconds = time.perf_counter() - t0
    return {
        "steps": cfg.steps,
        "tokens_seen": cfg.steps * cfg.batch_size * L,
        "epochs": cfg.steps * cfg.batch_size / n_windows,
        "train_tokens": int(len(stream)),
        "seconds": seconds,
        "tokens_per_second": cfg.steps * cfg.batch_size * L / seconds,
        "final_train_loss": float(np.mean(losses[-cfg.log_every:])),
    }


@torch.no_grad()
def model_loss(model: torch.nn.Module, sequences: Sequence[Sequence[int]]) -> float:
    """Mean next-token cross-entropy (nats/token) of ``model`` over the targets of ``sequences``, one at a time."""
    model.eval()
    total, n = 0.0, 0
    for seq in sequences:
        if len(seq) < 2:
            continue
        ids = torch.tensor([list(seq)], dtype=torch.long)
        logits = model(input_ids=ids[:, :-1]).logits[0].float()  # [len - 1, vocab]
        total += float(F.cross_entropy(logits, ids[0, 1:], reduction="sum"))
        n += len(seq) - 1
    return total / n


def encode(tokenizer: Any, texts: Sequence[str], max_length: int | None = None) -> list[list[int]]:
    """Tokenize with special tokens (BOS first), truncated to ``max_length`` when given."""
    kw = {"truncation": True, "max_length": max_length} if max_length else {}
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=True, **kw)["input_ids"]]


def build_model(corpus: str | Path, tokenizer_dir: str | Path, out_model: str | Path, out_json: str | Path,
                model_cfg: ModelConfig = ModelConfig(), train_cfg: TrainConfig = TrainConfig(),
                data: DataSplit = DataSplit()) -> dict[str, Any]:
    """Train the demo model, save it (with the tokenizer) to ``out_model``; write the losses to ``out_json``."""
    from transformers import AutoTokenizer, Gemma3ForCausalLM

    from causal_kl.demo import atomic_dir
    from causal_kl.demo.tokenizer import read_rows
    from causal_kl.io import provenance, write_json

    torch.set_num_threads(train_cfg.threads)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    train_ids = encode(tokenizer, read_rows(corpus, data.train_rows, data.column))
    eval_ids = encode(tokenizer, read_rows(corpus, data.eval_rows, data.column), data.eval_max_length)

    baselines = baseline_losses(train_ids, eval_ids, len(tokenizer), data.tune_fraction)
    log.info("baselines on held-out rows %s: unigram %.4f, bigram %.4f (lambda %.2f)", data.eval_rows,
             baselines["unigram"], baselines["bigram"], baselines["bigram_lambda"])

    torch.manual_seed(train_cfg.seed)
    hf_config = gemma3_config(model_cfg, tokenizer)
    model = Gemma3ForCausalLM(hf_config)
    model.config.use_cache = False
    n_params = sum(p.numel() for p in model.parameters())
    log.info("demo model: %d parameters, layer types %s", n_params, hf_config.layer_types)
    summary = train_model(model, token_stream(train_ids, tokenizer.eos_token_id), train_cfg)
    loss = model_loss(model, eval_ids)
    log.info("held-out loss: model %.4f, bigram %.4f, unigram %.4f", loss, baselines["bigram"], baselines["unigram"])

    model.config.use_cache = True
    with atomic_dir(out_model) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    record = {
        "heldout_loss": {"model": loss, **baselines},
        "beats_bigram": loss < baselines["bigram"],
        "heldout_tokens": int(sum(len(s) - 1 for s in eval_ids)),
        "parameters": n_params,
        **summary,
        "config": {"model": dataclasses.asdict(model_cfg), "train": dataclasses.asdict(train_cfg),
                   "data": dataclasses.asdict(data), "vocab_size": len(tokenizer),
                   "layer_types": list(hf_config.layer_types)},
        "provenance": provenance(model=str(out_model), torch=torch.__version__),
    }
    write_json(out_json, record)
    return record
