"""The patch engine: splice a vector into the residual stream at (L, p) and read the damage.

Two paths compute the same numbers:

* ``naive`` (the reference): for every variant, a full forward of ``input_ids[:p+32]`` with
  a forward hook replacing block L's output at p; logits only at the 32 readout positions.
* ``fast`` (the default): causality means a patch at (L, p) changes nothing before p and
  nothing at blocks <= L. Per document, one clean pass keeps every block's keys/values
  and the block-L states; then, for a batch of sites, all of their variants are recomputed
  only at positions p..p+31 and only through blocks L+1..end, attending to the clean
  prefix, with the LM head only at those positions. The clean row is never recomputed.

What the fast path must get right on Gemma-3 (each has a test that fails without it):
each block reads its own cached keys/values (``layer_idx``); sliding-window blocks get the
sliding mask for queries at absolute positions p..p+31; sliding blocks use the local
rotary embedding and global blocks the global one; the final logit soft-cap is applied.

Readout (``readout``): KL(clean || patched) of the next-token distribution, CE of the true
next token and delta-CE, in float32 from the final (soft-capped) logits, at offsets 0..31.
Offsets whose true next token lies past the document's end are absent.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import torch

from causal_kl import N_OFFSETS
from causal_kl.errors import CausalKLError
from causal_kl.models import LoadedModel

log = logging.getLogger(__name__)

ABLATIONS = frozenset({"layer_idx", "sliding_mask", "local_rope", "softcap"})
"""Test-only switches that remove one of the four things the fast path must get right."""


# --------------------------------------------------------------------------- readout
def readout(logp_clean: torch.Tensor, logp_patched: torch.Tensor, next_tokens: torch.Tensor,
            valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """KL(clean || patched), CE(patched) and delta-CE per position.

    logp_clean: ``[..., W, vocab]`` float32 log-probabilities of the clean run;
    logp_patched: ``[..., W, vocab]`` (broadcastable), next_tokens ``[..., W]`` (any value where
    ``valid`` is False), valid ``[..., W]`` bool. Returns three ``[..., W]`` float32 tensors
    with NaN where not valid, in the dtype of the inputs (float32 at least).
    """
    p_clean = logp_clean.exp()  # once per clean row, broadcast over the variants
    # the elementwise form keeps tiny KLs (the gold-repatch floor, ~1e-6) accurate; entropy minus
    # cross-entropy would lose them to cancellation against a ~5-nat entropy in float32
    kl = (p_clean * (logp_clean - logp_patched)).sum(-1)
    logp_clean = logp_clean.expand_as(logp_patched)
    idx = next_tokens.clamp_min(0).unsqueeze(-1)
    ce = -logp_patched.gather(-1, idx.expand(*logp_patched.shape[:-1], 1)).squeeze(-1)
    ce_clean = -logp_clean.gather(-1, idx.expand(*logp_clean.shape[:-1], 1)).squeeze(-1)
    nan = torch.tensor(float("nan"), device=kl.device)
    kl = torch.where(valid, kl, nan)
    ce = torch.where(valid, ce, nan)
    dce = torch.where(valid, ce - ce_clean, nan)
    return kl, ce, dce


def _readout_dtype(t: torch.Tensor) -> torch.Tensor:
    """Logits at least in float32 (float64 stays float64, so a float64 run is exact end to end)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def log_probs(loaded: LoadedModel, hidden: torch.Tensor, ablate: frozenset = frozenset(), normed: bool = False) -> torch.Tensor:
    """Final norm (unless ``normed``), LM head, soft-cap, float32 log-softmax: ``[..., d] -> [..., vocab]``."""
    logits = _readout_dtype(loaded.lm_head(hidden if normed else loaded.final_norm(hidden)))
    cap = loaded.final_logit_softcapping
    if cap is not None and "softcap" not in ablate:
        logits = logits.div_(cap).tanh_().mul_(cap)  # in place: the logits are the largest tensor here
    return torch.log_softmax(logits, dim=-1)


# --------------------------------------------------------------------------- data
@dataclass
class SiteVariants:
    """The variants to patch at one site: ``vectors[i]`` is placed at (L, position) for ``names[i]``."""

    site_id: int
    position: int
    names: list[str]
    vectors: torch.Tensor  # [V, d]


@dataclass
class SiteResult:
    """Readout of one site: arrays ``[V, W]`` (W = offsets kept, NaN where past the document's end)."""

    site_id: int
    names: list[str]
    kl: np.ndarray
    ce: np.ndarray
    delta_ce: np.ndarray
    clean_ce: np.ndarray  # [W]
    valid: np.ndarray  # [W] bool


def _window(input_ids: Sequence[int], p: int, width: int = N_OFFSETS) -> tuple[torch.Tensor, torch.Tensor]:
    """True next tokens ``[width]`` and validity ``[width]`` for offsets 0..width-1 at position p."""
    T = len(input_ids)
    nxt = torch.full((width,), -1, dtype=torch.long)
    for i in range(width):
        if p + i + 1 < T:
            nxt[i] = int(input_ids[p + i + 1])
    return nxt, nxt >= 0


def _check_sites(input_ids: Sequence[int], sites: Sequence[SiteVariants], d: int, doc: str = "document") -> None:
    T = len(input_ids)
    for s in sites:
        if not 0 <= s.position < T:
            raise CausalKLError("sites", "position", f"site {s.site_id} position {s.position} is out of range for {doc} ({T} tokens)",
                                "rebuild sites.parquet and docs.parquet together")
        if s.vectors.ndim != 2 or s.vectors.shape[1] != d:
            raise CausalKLError("conditions", "vector", f"site {s.site_id}: variant vectors of shape {tuple(s.vectors.shape)}, model width {d}",
                                "give vectors of the model's hidden size")
        if not torch.isfinite(s.vectors).all():
            raise CausalKLError("conditions", "vector", f"site {s.site_id}: a variant vector contains NaN or inf",
                                "recompute the reconstruction for that site")


# --------------------------------------------------------------------------- naive path
@torch.no_grad()
def naive_site(loaded: LoadedModel, input_ids: Sequence[int], layer: int, site: SiteVariants) -> SiteResult:
    """Reference: a full forward per variant (batched over the site's variants), hook at block ``layer``."""
    p = site.position
    end = min(p + N_OFFSETS, len(input_ids))
    dev = loaded.device
    x = torch.tensor([list(input_ids[:end])], dtype=torch.long, device=dev)
    keep = end - p
    V = site.vectors.shape[0]
    vec = site.vectors.to(dev, loaded.dtype)

    clean = _readout_dtype(loaded.model(input_ids=x, logits_to_keep=keep, use_cache=False).logits)  # [1, keep, vocab]

    def hook(_mod, _inp, out):
        h = out[0] if isinstance(out, tuple) else out
        h = h.clone()
        h[:, p] = vec
        return (h, *out[1:]) if isinstance(out, tuple) else h

    handle = loaded.layers[layer].register_forward_hook(hook)
    try:
        patched = _readout_dtype(loaded.model(input_ids=x.expand(V, -1), logits_to_keep=keep, use_cache=False).logits)
    finally:
        handle.remove()
    lp_clean = torch.log_softmax(clean, -1)
    lp_patch = torch.log_softmax(patched, -1)
    return _result(site, input_ids, lp_clean[0], lp_patch)


def _result(site: SiteVariants, input_ids: Sequence[int], lp_clean: torch.Tensor, lp_patch: torch.Tensor) -> SiteResult:
    """Readout for one site from ``lp_clean [W', vocab]`` and ``lp_patch [V, W', vocab]`` (W' <= 32)."""
    w = lp_clean.shape[0]
    nxt, valid = _window(input_ids, site.position)
    nxt, valid = nxt[:w].to(lp_clean.device), valid[:w].to(lp_clean.device)
    kl, ce, dce = readout(lp_clean.unsqueeze(0), lp_patch, nxt.expand(lp_patch.shape[0], -1), valid.expand(lp_patch.shape[0], -1))
    ce_clean = -lp_clean.gather(-1, nxt.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    ce_clean = torch.where(valid, ce_clean, torch.tensor(float("nan"), device=ce_clean.device))

    def pad(a: torch.Tensor) -> np.ndarray:
        a = a.cpu().numpy()
        if a.shape[-1] < N_OFFSETS:
            a = np.concatenate([a, np.full(a.shape[:-1] + (N_OFFSETS - a.shape[-1],), np.nan, a.dtype)], -1)
        return a

    v = np.zeros(N_OFFSETS, dtype=bool)
    v[:w] = valid.cpu().numpy()
    return SiteResult(site.site_id, list(site.names), pad(kl), pad(ce), pad(dce), pad(ce_clean), v)


# --------------------------------------------------------------------------- fast path
class _PrefixCache:
    """Stands in for a transformers ``Cache`` during window passes.

    ``update`` for block l returns block l's clean prefix keys/values (set per batch)
    concatenated with the window's own, so every block attends to its own cache entry.
    """

    def __init__(self, ablate: frozenset = frozenset()):
        self.prefix: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.seen: set[int] = set()
        self.ablate = ablate

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if "layer_idx" in self.ablate:  # trap: a block reads another block's entry (of the same shape)
            shape = self.prefix[layer_idx][0].shape
            others = [k for k in sorted(self.prefix) if k != layer_idx and self.prefix[k][0].shape == shape]
            layer_idx = others[0] if others else layer_idx
        self.seen.add(layer_idx)
        pk, pv = self.prefix[layer_idx]
        return torch.cat([pk, key_states], dim=2), torch.cat([pv, value_states], dim=2)


class _Recorder:
    """Stops nothing; records the block-L output of the clean pass."""

    def __init__(self):
        self.h: torch.Tensor | None = None

    def __call__(self, _mod, _inp, out):
        self.h = (out[0] if isinstance(out, tuple) else out).detach()


@dataclass
class CleanState:
    """What the fast path keeps from one document's clean pass."""

    hidden_L: torch.Tensor  # [T, d] block-L output
    keys: dict[int, torch.Tensor]  # block -> [1, kv_heads, T, head_dim] (post-rotary), blocks > L only
    values: dict[int, torch.Tensor]
    final_hidden: torch.Tensor  # [T, d] decoder output after the final norm


def _supports_fast(loaded: LoadedModel) -> None:
    if loaded.rotary_emb is None:
        raise CausalKLError(loaded.path, "architecture", f"{loaded.architecture} has no decoder-level rotary embedding, which the fast path needs",
                            "set patch.method: naive for this model")
    for i, layer in enumerate(loaded.layers):
        attn = getattr(layer, "self_attn", None)
        if attn is None or getattr(attn, "layer_idx", None) != i:
            raise CausalKLError(loaded.path, "architecture", f"{loaded.architecture} block {i} has no self_attn with layer_idx",
                                "set patch.method: naive for this model")


@torch.no_grad()
def clean_pass(loaded: LoadedModel, input_ids: Sequence[int], layer: int) -> CleanState:
    """One forward of the document through the model's own decoder, keeping what windows need."""
    from transformers import DynamicCache

    x = torch.tensor([list(input_ids)], dtype=torch.long, device=loaded.device)
    rec = _Recorder()
    handle = loaded.layers[layer].register_forward_hook(rec)
    cache = DynamicCache()  # no config: keeps every position of every block (sliding ones included)
    try:
        out = loaded.decoder(input_ids=x, cache=cache, use_cache=True)
    finally:
        handle.remove()
    keys, values = {}, {}
    for l in range(layer + 1, loaded.n_layers):
        entry = cache.layers[l]
        keys[l], values[l] = entry.keys, entry.values
        if keys[l].shape[2] != x.shape[1]:
            raise CausalKLError(loaded.path, "cache", f"block {l} cached {keys[l].shape[2]} of {x.shape[1]} positions",
                                "set patch.method: naive for this model")
    return CleanState(hidden_L=rec.h[0], keys=keys, values=values, final_hidden=out.last_hidden_state[0])


def _rotary(loaded: LoadedModel, h: torch.Tensor, position_ids: torch.Tensor, layer_type: str):
    rot = loaded.rotary_emb
    if "layer_type" in inspect.signature(rot.forward).parameters:
        return rot(h, position_ids, layer_type)
    return rot(h, position_ids)


def _masks(positions: torch.Tensor, V: int, prefix_pos: dict[str, torch.Tensor], window: int | None,
           dtype: torch.dtype, ablate: frozenset) -> dict[str, torch.Tensor]:
    """Additive masks ``[S, 1, V*32, P + V*32]`` per layer type.

    positions: ``[S]`` site positions p. prefix_pos[type]: ``[S, P]`` absolute position of each
    prefix key (-1 = padding). Query (v, i) of site s sits at p_s + i; it may attend prefix key a
    when 0 <= a < p_s and (full, or a > p_s + i - W), and the window key (v', i') of its own
    variant when i' <= i and (full, or i - i' < W).
    """
    dev = positions.device
    S = positions.shape[0]
    i = torch.arange(N_OFFSETS, device=dev)
    q_abs = positions[:, None] + i[None, :]  # [S, 32]
    q_abs = q_abs.repeat(1, V)  # [S, V*32], variant-major
    var = torch.arange(V, device=dev).repeat_interleave(N_OFFSETS)  # [V*32]
    off = i.repeat(V)  # [V*32]
    same_var = var[:, None] == var[None, :]
    causal = off[None, :] <= off[:, None]
    neg = torch.finfo(dtype).min
    out = {}
    for kind, ppos in prefix_pos.items():
        sliding = kind == "sliding_attention" and window is not None and "sliding_mask" not in ablate
        a = ppos[:, None, :]  # [S, 1, P]
        ok_prefix = ((a >= 0) & (a < positions[:, None, None])).expand(S, V * N_OFFSETS, -1)
        if sliding:
            ok_prefix = ok_prefix & (a > (q_abs[:, :, None] - window))
        ok_win = same_var & causal
        if sliding:
            ok_win &= (off[:, None] - off[None, :]) < window
        ok = torch.cat([ok_prefix, ok_win.expand(S, -1, -1)], dim=-1)  # [S, V*32, P + V*32]
        m = torch.zeros(ok.shape, dtype=dtype, device=dev)
        m.masked_fill_(~ok, neg)
        out[kind] = m[:, None]
    return out


@torch.no_grad()
def fast_sites(loaded: LoadedModel, input_ids: Sequence[int], layer: int, sites: Sequence[SiteVariants],
               state: CleanState | None = None, ablate: Iterable[str] = ()) -> list[SiteResult]:
    """Patch a batch of sites of one document (all with the same number of variants V)."""
    ablate = frozenset(ablate)
    assert ablate <= ABLATIONS, ablate
    if not sites:
        return []
    _supports_fast(loaded)
    V = sites[0].vectors.shape[0]
    if any(s.vectors.shape[0] != V for s in sites):
        raise ValueError("fast_sites: every site of a batch needs the same number of variants")
    state = state if state is not None else clean_pass(loaded, input_ids, layer)
    dev, dt = loaded.device, loaded.dtype
    T = len(input_ids)
    S = len(sites)
    pos = torch.tensor([s.position for s in sites], dtype=torch.long, device=dev)  # [S]
    i = torch.arange(N_OFFSETS, device=dev)
    abs_pos = pos[:, None] + i[None, :]  # [S, 32]
    gather = abs_pos.clamp_max(T - 1)
    h = state.hidden_L[gather]  # [S, 32, d]
    h = h[:, None].expand(S, V, N_OFFSETS, -1).clone()  # [S, V, 32, d]
    h[:, :, 0] = torch.stack([s.vectors for s in sites]).to(dev, dt)
    h = h.reshape(S, V * N_OFFSETS, -1)
    position_ids = abs_pos.repeat(1, V)  # [S, V*32]

    window = loaded.sliding_window
    types = {loaded.layer_type(l) for l in range(layer + 1, loaded.n_layers)}
    pmax = int(pos.max())
    prefix_pos: dict[str, torch.Tensor] = {}
    prefix_idx: dict[str, torch.Tensor] = {}
    for kind in types:
        if kind == "sliding_attention" and window is not None and "sliding_mask" not in ablate:
            lp = max(1, min(window - 1, pmax))
            idx = pos[:, None] - lp + torch.arange(lp, device=dev)[None, :]  # [S, lp]
            prefix_pos[kind] = torch.where(idx >= 0, idx, torch.full_like(idx, -1))
            prefix_idx[kind] = idx.clamp_min(0)
        else:
            lp = max(1, pmax)
            idx = torch.arange(lp, device=dev)[None, :].expand(S, -1)
            prefix_pos[kind] = idx
            prefix_idx[kind] = idx
    masks = _masks(pos, V, prefix_pos, window, dt, ablate)
    pe_types = {kind: ("full_attention" if "local_rope" in ablate and kind == "sliding_attention" else kind) for kind in types}
    pe = {kind: _rotary(loaded, h, position_ids, pe_types[kind]) for kind in types}

    cache = _PrefixCache(ablate)
    for l in range(layer + 1, loaded.n_layers):
        kind = loaded.layer_type(l)
        k, v = state.keys[l], state.values[l]  # [1, kvh, T, hd]
        idx = prefix_idx[kind]  # [S, P]
        if kind == "sliding_attention" and window is not None and "sliding_mask" not in ablate:
            gi = idx[:, None, :, None].expand(S, k.shape[1], idx.shape[1], k.shape[3])
            pk = torch.gather(k.expand(S, -1, -1, -1), 2, gi)
            pv = torch.gather(v.expand(S, -1, -1, -1), 2, gi)
        else:
            P = idx.shape[1]
            pk = k[:, :, :P].expand(S, -1, -1, -1)
            pv = v[:, :, :P].expand(S, -1, -1, -1)
        cache.prefix[l] = (pk, pv)
        out = loaded.layers[l](h, attention_mask=masks[kind], position_embeddings=pe[kind], position_ids=position_ids, cache=cache)
        h = out[0] if isinstance(out, tuple) else out
    expected = set(range(layer + 1, loaded.n_layers))
    if "layer_idx" not in ablate and cache.seen != expected:
        raise CausalKLError(loaded.path, "architecture", f"{loaded.architecture}: attention did not read the cache in blocks {sorted(expected - cache.seen)}",
                            "set patch.method: naive for this model")

    # readout: the clean row comes from the clean pass (normed hidden -> head), never recomputed
    results = []
    h = h.reshape(S, V, N_OFFSETS, -1)
    for si, site in enumerate(sites):
        w = min(N_OFFSETS, T - site.position)
        lp_clean = log_probs(loaded, state.final_hidden[site.position: site.position + w], ablate, normed=True)
        lp_patch = log_probs(loaded, h[si, :, :w], ablate)
        results.append(_result(site, input_ids, lp_clean, lp_patch))
    return results


# --------------------------------------------------------------------------- shards
def auto_sites_per_batch(loaded: LoadedModel, n_variants: int, doc_len: int) -> int:
    """Sites per window batch: from free accelerator memory on CUDA, a small fixed number on CPU."""
    if loaded.device.type != "cuda":
        return 4
    free, _ = torch.cuda.mem_get_info(loaded.device)
    cfg = loaded.text_config
    vocab = int(getattr(cfg, "vocab_size", 32000))
    kvh = int(getattr(cfg, "num_key_value_heads", cfg.num_attention_heads))
    hd = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    rows = n_variants * N_OFFSETS
    per_site = rows * vocab * 4 * 3  # logits + log-softmax + exp, float32
    per_site += rows * (doc_len + rows) * (4 * cfg.num_attention_heads + 2 * 2 * kvh * hd / max(rows, 1))
    per_site += rows * int(getattr(cfg, "intermediate_size", 4 * cfg.hidden_size)) * 2 * 4
    return int(max(1, min(32, (0.5 * free) // per_site)))


def patch_document(loaded: LoadedModel, input_ids: Sequence[int], layer: int, sites: Sequence[SiteVariants],
                   method: str = "fast", sites_per_batch: int | str = "auto", doc: str = "document") -> list[SiteResult]:
    """Patch every site of one document; sites are grouped by variant count for the fast path."""
    if not sites:
        return []
    _check_sites(input_ids, sites, loaded.d_model, doc)
    if method == "naive":
        return [naive_site(loaded, input_ids, layer, s) for s in sites]
    if method != "fast":
        raise CausalKLError("config", "patch.method", f"unknown method {method!r}", "use fast or naive")
    # nothing after the last window's last position can affect any readout: the clean pass stops there
    input_ids = list(input_ids[: max(s.position for s in sites) + N_OFFSETS + 1])
    state = clean_pass(loaded, input_ids, layer)
    groups: dict[int, list[SiteVariants]] = {}
    for s in sites:
        groups.setdefault(s.vectors.shape[0], []).append(s)
    results = {}
    for V, group in groups.items():
        n = auto_sites_per_batch(loaded, V, len(input_ids)) if sites_per_batch == "auto" else int(sites_per_batch)
        group = sorted(group, key=lambda s: s.position)  # neighbours share prefix lengths
        for b in range(0, len(group), n):
            for r in fast_sites(loaded, input_ids, layer, group[b: b + n], state):
                results[r.site_id] = r
    return [results[s.site_id] for s in sites]


def results_table(results: Sequence[SiteResult], route: str = "", include_clean: bool = False) -> pa.Table:
    """SiteResults -> PATCH rows (offsets past the document's end dropped)."""
    cols = {k: [] for k in ("site_id", "route", "condition", "offset", "kl", "ce", "delta_ce")}
    for r in results:
        offs = np.nonzero(r.valid)[0]
        rows = [(name, r.kl[v], r.ce[v], r.delta_ce[v]) for v, name in enumerate(r.names)]
        if include_clean:
            z = np.zeros(N_OFFSETS, dtype=np.float32)
            rows.insert(0, ("clean", z, r.clean_ce, z))
        for name, kl, ce, dce in rows:
            n = len(offs)
            cols["site_id"] += [r.site_id] * n
            cols["route"] += [route] * n
            cols["condition"] += [name] * n
            cols["offset"] += offs.tolist()
            cols["kl"] += kl[offs].tolist()
            cols["ce"] += ce[offs].tolist()
            cols["delta_ce"] += dce[offs].tolist()
    from causal_kl.contracts import PATCH

    return pa.table(cols).cast(PATCH.schema())
