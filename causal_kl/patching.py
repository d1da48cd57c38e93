"""The patch engine: splice vectors into the residual stream at (L, p..p+k-1) and read the damage.

Two paths compute the same numbers:

* ``naive`` (the reference): for every variant, a full forward of ``input_ids[:p+k-1+32]``
  with a forward hook replacing block L's output at positions p..p+k-1; logits only at the
  readout positions.
* ``fast`` (the default): causality means a patch at (L, p..p+k-1) changes nothing before p
  and nothing at blocks <= L. Per document, one clean pass keeps every block's keys/values
  and the block-L states; then, for a batch of sites (of one or several documents), all of
  their variants are recomputed only at the k-1+32 positions p..p+k-1+31 ("the window": the
  span, then 32 readout positions after its last one) and only through blocks L+1..end,
  attending to the clean prefix (positions < p), with the LM head only at those positions.
  A span of k = 1 is the single-site splice. The clean row is never recomputed.

Attention in the window pass: the model's own decoder blocks run (its q/k/v projections, norms
and rotary embedding), but their attention function is swapped, through transformers'
``AttentionInterface``, for ``_window_attention``. It never copies the prefix: the queries of
every site, variant and query head of a document are folded into one axis, so a single batched
GEMM per kv-head reads the document's one cached prefix (a view of the clean pass's keys), and a
second small GEMM per (site, variant) covers the window's own keys. Masks (prefix length, sliding
window, causal within a variant) are built once per batch and reused by every block; the two
parts are merged in one softmax in float32 (float64 for a float64 model), with the model's own
``scaling``, ``sliding_window`` and (where the model passes one) attention logit soft-cap. The swap
lasts one window pass (the clean pass and the naive path keep the model's own kernel); one window
pass at a time per model.

What the fast path must get right on Gemma-3 (each has a test that fails without it, see
``ABLATIONS``): each block reads its own cached keys/values (``layer_idx``); sliding-window
blocks get the sliding mask for queries at absolute positions p..p+k-1+31; sliding blocks use the
local rotary embedding and global blocks the global one; the final logit soft-cap is applied.
And on the other families (``FAMILY_ABLATIONS``): Gemma-2's attention-logit soft-cap inside every
attention call; gpt-oss's attention sinks (one learned logit per head that joins every softmax's denominator and
attends to nothing, ``s_aux``); the window's absolute positions given explicitly to the rotary embedding (GPT-NeoX's
partial rotary, every rotary family). Each family's parts (blocks, their self-attention, rotary
module or none) come from its adapter (``causal_kl.families``, through the ``LoadedModel``); the
window pass itself has no family branch: it runs the model's own blocks (GPT-2's Conv1D projections,
GPT-NeoX's parallel residual, Gemma's extra norms) with the swapped attention function.

A model the fast path cannot run (a block without a ``layer_idx``'d attention, such as Qwen3.5's
linear-attention (Gated DeltaNet) blocks, whose recurrent state over the prefix no KV cache holds; an
attention that reports another sliding window than its layer type) is patched by the naive path instead,
said once in the log (``patch_documents``) and recorded: ``method_used`` is what the outputs' provenance
says ran. Never a failure asking the user to change ``patch.method``.

Readout (``readout``): KL(clean || patched) of the next-token distribution, CE of the true
next token and delta-CE, in float32 from the final (soft-capped) logits, at offsets -(k-1)..31
counted from the span's last position (offset 0 predicts token p+k; negative offsets are the
positions inside the span). Offsets whose true next token lies past the document's end are NaN.

Clean passes can be shared across calls (floors job, then each route's job of a shard in a
long-lived process) through a ``CleanCache``.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import inspect
import logging
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

from causal_kl import N_OFFSETS
from causal_kl.conditions import CLEAN
from causal_kl.errors import CausalKLError
from causal_kl.hooks import RESID_POST
from causal_kl.models import LoadedModel, at_hook

log = logging.getLogger(__name__)

ABLATIONS = frozenset({"layer_idx", "sliding_mask", "local_rope", "softcap"})
"""Test-only switches that remove one of the four things the fast path must get right (on Gemma-3)."""
FAMILY_ABLATIONS = frozenset({"attn_softcap", "positions", "sinks"})
"""Test-only switches for the other families' traps: Gemma-2's attention-logit soft-cap left out; the window's
positions counted from 0 instead of given as absolute positions (rotary families); gpt-oss's attention sinks left
out of the softmax."""


class FastPathUnavailable(CausalKLError):
    """The fast path cannot run this model; ``patch_documents`` then uses the naive path (and says so once)."""


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
    kl = torch.sub(logp_clean, logp_patched).mul_(p_clean).sum(-1)  # one temporary: these are vocab-wide rows
    kl.clamp_min_(0.0)  # KL >= 0; float rounding can leave -1e-8 where the distributions agree (the gold floor)
    logp_clean = logp_clean.expand_as(logp_patched)
    idx = next_tokens.clamp_min(0).unsqueeze(-1)
    ce = -logp_patched.gather(-1, idx.expand(*logp_patched.shape[:-1], 1)).squeeze(-1)
    ce_clean = -logp_clean.gather(-1, idx.expand(*logp_clean.shape[:-1], 1)).squeeze(-1)
    nan = torch.tensor(float("nan"), device=kl.device, dtype=kl.dtype)
    kl = torch.where(valid, kl, nan)
    ce = torch.where(valid, ce, nan)
    dce = torch.where(valid, ce - ce_clean, nan)
    return kl, ce, dce


def _readout_dtype(t: torch.Tensor) -> torch.Tensor:
    """Logits at least in float32 (float64 stays float64, so a float64 run is exact end to end)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def log_probs(loaded: LoadedModel, hidden: torch.Tensor, ablate: frozenset = frozenset(), normed: bool = False) -> torch.Tensor:
    """Final norm (unless ``normed``), LM head, soft-cap, float32 log-softmax: ``[..., d_model] -> [..., vocab]``."""
    logits = _readout_dtype(loaded.lm_head(hidden if normed else loaded.final_norm(hidden)))
    cap = loaded.final_logit_softcapping
    if cap is not None and "softcap" not in ablate:
        logits = logits.div_(cap).tanh_().mul_(cap)  # in place: the logits are the largest tensor here
    return torch.log_softmax(logits, dim=-1)


# --------------------------------------------------------------------------- data
@dataclass
class SiteVariants:
    """The variants to patch at one site.

    ``vectors`` is ``[V, d_model]`` (a span of 1: ``vectors[v]`` replaces (L, position)) or
    ``[V, k, d_model]`` (a span of k: ``vectors[v, j]`` replaces (L, position + j), j < k, all at once).
    """

    site_id: int
    position: int
    names: list[str]
    vectors: torch.Tensor  # [V, d_model] or [V, k, d_model]

    @property
    def span(self) -> int:
        """k, the number of consecutive positions each variant replaces."""
        return 1 if self.vectors.ndim == 2 else int(self.vectors.shape[1])

    @property
    def n_variants(self) -> int:
        return int(self.vectors.shape[0])

    def span_vectors(self) -> torch.Tensor:
        """The vectors as ``[V, k, d_model]`` whatever the input's form."""
        return self.vectors[:, None] if self.vectors.ndim == 2 else self.vectors


def span_offsets(k: int) -> np.ndarray:
    """Readout offsets of a span of k, ``[k - 1 + 32]`` int: -(k-1)..31, counted from the span's last position."""
    return np.arange(-(k - 1), N_OFFSETS, dtype=np.int64)


@dataclass
class SiteResult:
    """Readout of one site: arrays ``[V, W]``, W = k - 1 + 32 readout positions p..p+k-1+31.

    Column j is offset ``offsets[j]`` (= j - (k - 1)); NaN (and ``valid`` False) where the true next
    token lies past the document's end. For k = 1, W = 32 and column j is offset j, as before spans.
    """

    site_id: int
    names: list[str]
    kl: np.ndarray  # [V, W]
    ce: np.ndarray  # [V, W]
    delta_ce: np.ndarray  # [V, W]
    clean_ce: np.ndarray  # [W]
    valid: np.ndarray  # [W] bool
    offsets: np.ndarray = field(default_factory=lambda: span_offsets(1))  # [W] int
    span: int = 1

    def column(self, offset: int) -> int:
        """Index of ``offset`` in the arrays' last axis."""
        return int(offset) + self.span - 1


def _next_tokens(input_ids: Sequence[int], p: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """True next tokens ``[width]`` (-1 past the end) and validity ``[width]`` for positions p..p+width-1."""
    T = len(input_ids)
    nxt = np.full(width, -1, dtype=np.int64)
    n = max(0, min(width, T - p - 1))
    if n:
        nxt[:n] = np.asarray(input_ids[p + 1: p + 1 + n], dtype=np.int64)
    return nxt, nxt >= 0


def _check_sites(input_ids: Sequence[int], sites: Sequence[SiteVariants], d: int, doc: str = "document") -> None:
    T = len(input_ids)
    for s in sites:
        if s.vectors.ndim not in (2, 3) or s.vectors.shape[-1] != d or s.vectors.shape[0] == 0 or s.vectors.ndim == 3 and s.vectors.shape[1] == 0:
            raise CausalKLError("conditions", "vector", f"site {s.site_id}: variant vectors of shape {tuple(s.vectors.shape)}, hook width {d}",
                                "give vectors of the hook's width, [variants, d] or [variants, span, d]")
        if not 0 <= s.position or s.position + s.span > T:
            what = f"position {s.position}" if s.span == 1 else f"span {s.position}..{s.position + s.span - 1}"
            raise CausalKLError("sites", "position", f"site {s.site_id} {what} is out of range for {doc} ({T} tokens)",
                                "rebuild sites.parquet and docs.parquet together; sites whose span runs past the end are excluded upstream")
        if len(s.names) != s.n_variants:
            raise CausalKLError("conditions", "names", f"site {s.site_id}: {len(s.names)} names for {s.n_variants} variants",
                                "give one name per variant")
        if not torch.isfinite(s.vectors).all():
            raise CausalKLError("conditions", "vector", f"site {s.site_id}: a variant vector contains NaN or inf",
                                "recompute the reconstruction for that site")


def _to_result(site: SiteVariants, kl: np.ndarray, ce: np.ndarray, dce: np.ndarray, ce_clean: np.ndarray, valid: np.ndarray) -> SiteResult:
    return SiteResult(site.site_id, list(site.names), kl, ce, dce, ce_clean, valid, span_offsets(site.span), site.span)


# --------------------------------------------------------------------------- naive path
@torch.no_grad()
def naive_site(loaded: LoadedModel, input_ids: Sequence[int], layer: int, site: SiteVariants,
               hook: str = RESID_POST) -> SiteResult:
    """Reference: a full forward per variant (batched over the site's variants), a forward hook at ``hook`` of block
    ``layer`` (the block's output, or the module inside it that the family's table names) replacing positions p..p+k-1."""
    p, k = site.position, site.span
    width = k - 1 + N_OFFSETS
    end = min(p + width, len(input_ids))
    dev = loaded.device
    x = torch.tensor([list(input_ids[:end])], dtype=torch.long, device=dev)
    keep = end - p
    V = site.n_variants
    vec = site.span_vectors().to(dev, loaded.dtype)  # [V, k, d]

    clean = _readout_dtype(loaded.model(input_ids=x, logits_to_keep=keep, use_cache=False).logits)  # [1, keep, vocab]

    def splice(h: torch.Tensor) -> torch.Tensor:
        h = h.clone()
        h[:, p: p + k] = vec
        return h

    with at_hook(loaded, layer, hook, splice):
        patched = _readout_dtype(loaded.model(input_ids=x.expand(V, -1), logits_to_keep=keep, use_cache=False).logits)
    lp_clean = torch.log_softmax(clean, -1)[0]  # [keep, vocab]
    lp_patch = torch.log_softmax(patched, -1)  # [V, keep, vocab]
    nxt, valid = _next_tokens(input_ids, p, width)
    nxt_t = torch.from_numpy(nxt[:keep]).to(dev)
    valid_t = torch.from_numpy(valid[:keep]).to(dev)
    kl, ce, dce = readout(lp_clean[None], lp_patch, nxt_t.expand(V, -1), valid_t.expand(V, -1))
    ce_clean = -lp_clean.gather(-1, nxt_t.clamp_min(0)[:, None])[:, 0]
    ce_clean = torch.where(valid_t, ce_clean, torch.full_like(ce_clean, float("nan")))

    def pad(a: torch.Tensor) -> np.ndarray:
        a = a.cpu().numpy()
        if a.shape[-1] < width:
            a = np.concatenate([a, np.full(a.shape[:-1] + (width - a.shape[-1],), np.nan, a.dtype)], -1)
        return a

    return _to_result(site, pad(kl), pad(ce), pad(dce), pad(ce_clean), valid)


# --------------------------------------------------------------------------- clean pass
def window_start(layer: int, hook: str = RESID_POST) -> int:
    """The first block a window pass runs for a splice at (layer, hook): block L + 1 after a splice of block L's output;
    block L itself for a hook inside it (its rows are clean on input; the hook replaces the span's rows inside it)."""
    return int(layer) + 1 if hook == RESID_POST else int(layer)


@dataclass
class CleanState:
    """What the fast path keeps from one document's clean pass (T = the tokens it covered).

    ``start``: the first block the window pass runs (``window_start``); ``hidden_L`` is that block's input, i.e.
    block ``start - 1``'s output (the design's layer ``start - 1``; the embeddings when ``start`` is 0)."""

    hidden_L: torch.Tensor  # [T, d_model] the input of block ``start``
    keys: dict[int, torch.Tensor]  # block -> [1, kv_heads, T, head_dim] (post-rotary), blocks >= start only
    values: dict[int, torch.Tensor]
    final_hidden: torch.Tensor  # [T, d_model] decoder output after the final norm
    start: int = -1

    @property
    def n_tokens(self) -> int:
        return int(self.hidden_L.shape[0])

    def nbytes(self) -> int:
        ts = [self.hidden_L, self.final_hidden, *self.keys.values(), *self.values.values()]
        return int(sum(t.numel() * t.element_size() for t in ts))


def _cache_kwarg(module: torch.nn.Module) -> str:
    """The name a decoder's forward gives its KV cache: ``cache`` (transformers >= 5.2x) or ``past_key_values``."""
    params = inspect.signature(module.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _supports_fast(loaded: LoadedModel) -> None:
    """Raises ``FastPathUnavailable`` when the model lacks what the window pass needs."""
    linear = [i for i in range(loaded.n_layers) if loaded.layer_type(i) == "linear_attention"]
    if linear:
        raise FastPathUnavailable(loaded.path, "architecture",
                                  f"{loaded.architecture} has linear-attention blocks ({', '.join(map(str, linear))}), whose "
                                  "recurrent state over the prefix the window pass does not carry",
                                  "none needed: the naive path gives the same numbers")
    if loaded.family.rotary is not None and loaded.rotary_emb is None:
        raise FastPathUnavailable(loaded.path, "architecture",
                                  f"{loaded.architecture} has no decoder-level rotary embedding ({loaded.family.rotary}), which the fast path needs",
                                  "set patch.method: naive for this model")
    for i, layer in enumerate(loaded.layers):
        attn = getattr(layer, loaded.family.attention, None)
        if attn is None or getattr(attn, "layer_idx", None) != i or not hasattr(attn, "config"):
            raise FastPathUnavailable(loaded.path, "architecture",
                                      f"{loaded.architecture} block {i} has no {loaded.family.attention} with layer_idx",
                                      "set patch.method: naive for this model")


@torch.no_grad()
def clean_pass(loaded: LoadedModel, input_ids: Sequence[int], layer: int, hook: str = RESID_POST) -> CleanState:
    """One forward of the document through the model's own decoder (its own attention kernel), keeping what windows
    need: the input of the window's first block (``window_start``) and the keys/values of it and every later block."""
    from transformers import DynamicCache

    _supports_fast(loaded)
    start = window_start(layer, hook)
    x = torch.tensor([list(input_ids)], dtype=torch.long, device=loaded.device)
    rec: list[torch.Tensor] = []

    def record(h: torch.Tensor) -> None:
        rec.append(h.detach())

    # the input of block ``start`` is block ``start - 1``'s output; the embeddings (with GPT-2's positions) for block 0
    where = (start - 1, RESID_POST) if start > 0 else (0, "block_in")
    cache = DynamicCache()  # no config: keeps every position of every block (sliding ones included)
    with _record_block_input(loaded, 0, record) if where[1] == "block_in" else at_hook(loaded, where[0], RESID_POST, record):
        out = loaded.decoder(input_ids=x, use_cache=True, **{_cache_kwarg(loaded.decoder): cache})
    keys, values = {}, {}
    for l in range(start, loaded.n_layers):
        entry = cache.layers[l] if l < len(getattr(cache, "layers", ())) else None
        n = entry.keys.shape[2] if entry is not None and entry.keys is not None and entry.keys.ndim == 4 else 0
        if n != x.shape[1]:
            raise FastPathUnavailable(loaded.path, "cache", f"block {l} cached {n} of {x.shape[1]} positions",
                                "set patch.method: naive for this model")
        keys[l], values[l] = entry.keys, entry.values
    return CleanState(hidden_L=rec[0][0], keys=keys, values=values, final_hidden=out.last_hidden_state[0], start=start)


@contextlib.contextmanager
def _record_block_input(loaded: LoadedModel, block: int, fn):
    """While inside: ``fn(hidden_states)`` with the input of block ``block`` on every forward through it."""
    def pre_hook(_mod, args, kwargs):
        fn(args[0] if args else kwargs["hidden_states"])

    handle = loaded.layers[block].register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


class CleanCache:
    """Clean passes shared between calls: an LRU of ``CleanState`` bounded by bytes on each device.

    Keyed by the model's identity (object, path, dtype, device), the layer, and the token ids of the
    clean pass (blake2b hash and length); ``patch_document(s, clean_cache=...)`` looks documents up
    here before computing them, so a long-lived process (a model server) computes each document's
    clean pass once for the floors and every route of a shard. ``clean_passes`` counts the passes
    computed through it, ``hits`` the ones served from it; each computed pass is logged at INFO.
    Not thread-safe: one window pass at a time per model.

    max_bytes: budget per device; None = 4 GiB on CPU, 25% of the free memory of a CUDA device when
    it is first used.
    """

    def __init__(self, max_bytes: int | None = None):
        self.max_bytes = max_bytes
        self._budget: dict[str, int] = {}
        self._store: OrderedDict[tuple, CleanState] = OrderedDict()
        self._dev: dict[tuple, str] = {}
        self.clean_passes = 0
        self.hits = 0

    @staticmethod
    def key(loaded: LoadedModel, input_ids: Sequence[int], layer: int, hook: str = RESID_POST) -> tuple:
        """Keyed by the window's first block: a splice at (L - 1, resid_post) and one inside block L share a clean pass."""
        ids = np.asarray(list(input_ids), dtype=np.int64)
        digest = hashlib.blake2b(ids.tobytes(), digest_size=16).hexdigest()
        return (id(loaded.model), loaded.path, str(loaded.dtype), str(loaded.device), window_start(layer, hook), digest, len(ids))

    def _device_budget(self, device: torch.device) -> int:
        name = str(device)
        if name not in self._budget:
            if self.max_bytes is not None:
                self._budget[name] = int(self.max_bytes)
            elif device.type == "cuda":
                self._budget[name] = int(0.25 * _free_bytes(device))
            else:
                self._budget[name] = 4 << 30
        return self._budget[name]

    def bytes_on(self, device: torch.device | str) -> int:
        return sum(s.nbytes() for k, s in self._store.items() if self._dev[k] == str(device))

    def __len__(self) -> int:
        return len(self._store)

    def get(self, loaded: LoadedModel, input_ids: Sequence[int], layer: int, hook: str = RESID_POST) -> CleanState:
        """The document's clean state: from the cache, or computed (and stored if it fits)."""
        key = self.key(loaded, input_ids, layer, hook)
        if key in self._store:
            self._store.move_to_end(key)
            self.hits += 1
            return self._store[key]
        state = clean_pass(loaded, input_ids, layer, hook)
        self.clean_passes += 1
        log.info("clean pass %d: %d tokens, window from block %d (%s)", self.clean_passes, key[-1], state.start, loaded.device)
        dev = loaded.device
        budget, size = self._device_budget(dev), state.nbytes()
        if size <= budget:
            self._store[key] = state
            self._dev[key] = str(dev)
            while self.bytes_on(dev) > budget:
                old = next(k for k in self._store if self._dev[k] == str(dev))
                del self._store[old], self._dev[old]
        return state

    def clear(self) -> None:
        self._store.clear()
        self._dev.clear()


# --------------------------------------------------------------------------- window attention
_ATTN_NAME = "causal_kl_window"
_ACTIVE: contextvars.ContextVar[_WindowContext | None] = contextvars.ContextVar("causal_kl_window", default=None)
_OUT_DTYPE_OK: dict[str, bool] = {}


def _mm(a: torch.Tensor, b: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """``a @ b`` with the result in ``out_dtype`` (float32 for half-precision inputs: no rounding of scores to bf16).

    a ``[..., m, k]``, b ``[..., k, n]`` with equal leading dims. On CUDA, bf16/fp16 inputs use the GEMM's
    float32 output directly (``torch.bmm(..., out_dtype=)``) where this torch has it; otherwise the inputs
    are upcast.
    """
    if a.dtype == out_dtype or b.dtype == out_dtype:  # float32/64 models; or probabilities kept in float32
        return torch.matmul(a.to(out_dtype), b.to(out_dtype))
    dev = str(a.device.type)
    if _half_gemm_to_float32(a.device):
        lead = a.shape[:-2]
        try:
            r = torch.bmm(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:]), out_dtype=out_dtype)
            return r.view(*lead, *r.shape[-2:])
        except (TypeError, RuntimeError, NotImplementedError):
            _OUT_DTYPE_OK[dev] = False
    return torch.matmul(a.to(out_dtype), b.to(out_dtype))


def _half_gemm_to_float32(device: torch.device) -> bool:
    """Whether half-precision GEMMs here can write float32 results (CUDA, a torch with ``bmm(out_dtype=)``)."""
    dev = device.type
    if dev != "cuda":
        return False
    if dev not in _OUT_DTYPE_OK:
        try:
            a = torch.zeros(1, 2, 2, device=device, dtype=torch.bfloat16)
            _OUT_DTYPE_OK[dev] = torch.bmm(a, a, out_dtype=torch.float32).dtype == torch.float32
        except (TypeError, RuntimeError, NotImplementedError):
            _OUT_DTYPE_OK[dev] = False
    return _OUT_DTYPE_OK[dev]


@dataclass
class _Segment:
    """Rows [r0, r1) of a window batch (sites [s0, s1) of one document) sharing one prefix key range [lo, hi)."""

    part: int
    r0: int
    r1: int
    s0: int
    s1: int
    lo: int
    hi: int
    mask: torch.Tensor | None = None  # additive [S_seg, 1, Wr, 1, hi - lo]


class _WindowContext:
    """Everything a window batch's attention calls share: prefixes, segments and masks per layer type."""

    def __init__(self, loaded: LoadedModel, layer: int, states: list[CleanState], segments: dict[str, list[_Segment]],
                 win_masks: dict[str, torch.Tensor], kinds: dict[int, str], n_variants: int, width: int,
                 compute_dtype: torch.dtype, ablate: frozenset):
        self.loaded, self.layer, self.states, self.segments = loaded, layer, states, segments
        self.win_masks, self.kinds, self.V, self.Wr = win_masks, kinds, n_variants, width
        self.cdt, self.ablate = compute_dtype, ablate
        self.seen: set[int] = set()
        self.source = {l: l for l in kinds}
        if "layer_idx" in ablate:  # trap: a block reads another block's cache entry (of the same type, so the same shape)
            for l, kind in kinds.items():
                others = [o for o, k in sorted(kinds.items()) if o != l and k == kind]
                self.source[l] = others[0] if others else l

    def attend(self, module, query, key, value, scaling, sliding_window, softcap, sinks=None):
        """query ``[1, heads, N, head_dim]``, key/value ``[1, kv_heads, N, head_dim]`` (the window's own) -> ``[1, N, heads, head_dim]``.

        ``sinks``: ``[heads]`` logits (gpt-oss's ``s_aux``) that join every query's softmax and attend to nothing."""
        l = int(module.layer_idx)
        if l not in self.kinds:
            raise CausalKLError(self.loaded.path, "architecture", f"window attention called for block {l}, outside {min(self.kinds)}..{max(self.kinds)}",
                                "set patch.method: naive for this model")
        self.seen.add(l)
        kind = self.kinds[l]
        expect = self.loaded.sliding_window if self.loaded.layer_type(l) == "sliding_attention" else None
        if sliding_window is not None and sliding_window != expect:
            raise FastPathUnavailable(self.loaded.path, "architecture",
                                      f"block {l} attends with sliding window {sliding_window}, its layer type says {expect}",
                                      "set patch.method: naive for this model")
        if "attn_softcap" in self.ablate:  # trap: Gemma-2's attention-logit soft-cap left out
            softcap = None
        if "sinks" in self.ablate:  # trap: gpt-oss's attention sinks left out
            sinks = None
        src = self.source[l]
        _, H, N, hd = query.shape
        KVH = key.shape[1]
        G = H // KVH
        V, Wr, cdt, dt = self.V, self.Wr, self.cdt, query.dtype
        scale = float(scaling) if scaling is not None else hd ** -0.5
        # probabilities enter the PV GEMM in the model's dtype where that GEMM runs on tensor cores with a float32
        # result (as flash attention does); elsewhere the GEMM runs in float32 anyway, so they stay float32
        pdt = dt if _half_gemm_to_float32(query.device) else cdt
        q = query[0].view(KVH, G, N, hd).permute(0, 2, 1, 3).contiguous()  # [KVH, N, G, hd]: rows then query groups
        if dt == cdt:  # float32/64: scale q (N x heads x head_dim) rather than every score (N x heads x keys)
            q, post = q.mul_(scale), 1.0
        else:  # half precision: scale the float32 scores, never round q * scale to bf16
            post = scale
        kw_all, vw_all = key[0], value[0]  # [KVH, N, hd]
        sink = sinks.to(cdt).view(KVH, 1, G) if sinks is not None else None  # head h = kv head * G + group
        out = torch.empty(N, KVH, G, hd, dtype=dt, device=query.device)
        win_mask = self.win_masks[kind]  # [Wr, 1, Wr]
        for seg in self.segments[kind]:
            n, SV, S = seg.r1 - seg.r0, (seg.r1 - seg.r0) // Wr, seg.s1 - seg.s0
            qs = q[:, seg.r0: seg.r1]  # [KVH, n, G, hd]
            # the window's own keys: per (site, variant), Wr x Wr
            sw = _mm(qs.reshape(KVH, SV, Wr * G, hd), kw_all[:, seg.r0: seg.r1].reshape(KVH, SV, Wr, hd).transpose(-1, -2), cdt)
            if post != 1.0:
                sw.mul_(post)
            if softcap is not None:
                sw.div_(softcap).tanh_().mul_(softcap)
            sw.view(KVH, SV, Wr, G, Wr).add_(win_mask)
            m = sw.amax(-1).view(KVH, n * G)
            sp = None
            if seg.hi > seg.lo:  # the clean prefix: one GEMM per kv-head over every row of the segment
                st = self.states[seg.part]
                kp = st.keys[src][0, :, seg.lo: seg.hi]  # [KVH, P, hd], a view: never copied per site
                vp = st.values[src][0, :, seg.lo: seg.hi]
                sp = _mm(qs.reshape(KVH, n * G, hd), kp.transpose(-1, -2), cdt)  # [KVH, n*G, P]
                if post != 1.0:
                    sp.mul_(post)
                if softcap is not None:
                    sp.div_(softcap).tanh_().mul_(softcap)
                sp.view(KVH, S, V, Wr, G, -1).add_(seg.mask)
                m = torch.maximum(m, sp.amax(-1))
            if sink is not None:  # the sink logit of each row's head: one more term of the softmax, no value
                sink_rows = sink.expand(KVH, n, G).reshape(KVH, n * G)
                m = torch.maximum(m, sink_rows)
            # one softmax over both parts: shared row max, summed denominators
            sw.sub_(m.view(KVH, SV, Wr * G, 1)).exp_()
            denom = sw.sum(-1).view(KVH, n * G)
            if sink is not None:
                denom += (sink_rows - m).exp()
            o = _mm(sw.to(pdt), vw_all[:, seg.r0: seg.r1].reshape(KVH, SV, Wr, hd), cdt).view(KVH, n * G, hd)
            if sp is not None:
                sp.sub_(m[..., None]).exp_()
                denom += sp.sum(-1)
                o += _mm(sp.to(pdt), vp, cdt)
            o /= denom[..., None]
            out[seg.r0: seg.r1] = o.view(KVH, n, G, hd).permute(1, 0, 2, 3)
        return out.view(1, N, H, hd), None


def _window_attention(module, query, key, value, attention_mask=None, dropout=0.0, scaling=None, sliding_window=None,
                      softcap=None, s_aux=None, **kwargs):
    """The attention function registered with transformers' ``AttentionInterface`` for window passes (``s_aux``:
    gpt-oss's attention sinks, as transformers passes them to every attention implementation)."""
    ctx = _ACTIVE.get()
    if ctx is None:
        raise RuntimeError(f"attention implementation {_ATTN_NAME!r} is only usable inside a causal_kl window pass")
    return ctx.attend(module, query, key, value, scaling, sliding_window, softcap, s_aux)


@contextlib.contextmanager
def _window_attention_active(loaded: LoadedModel, ctx: _WindowContext):
    """Route blocks L+1.. through ``_window_attention`` for the duration (restores the model's own implementation)."""
    from transformers import AttentionInterface

    AttentionInterface.register(_ATTN_NAME, _window_attention)
    configs = {}
    for l in ctx.kinds:
        cfg = loaded.attention(l).config
        configs[id(cfg)] = cfg
    old = {i: c._attn_implementation for i, c in configs.items()}
    token = _ACTIVE.set(ctx)
    try:
        for c in configs.values():
            c._attn_implementation = _ATTN_NAME
        yield
    finally:
        for i, c in configs.items():
            c._attn_implementation = old[i]
        _ACTIVE.reset(token)


# --------------------------------------------------------------------------- fast path
def _rotary(loaded: LoadedModel, h: torch.Tensor, position_ids: torch.Tensor, layer_type: str):
    """The rotary module's (cos, sin) at ``position_ids`` for blocks of ``layer_type`` (Gemma-3 has one per type)."""
    rot = loaded.rotary_emb
    if "layer_type" in inspect.signature(rot.forward).parameters:
        return rot(h, position_ids, layer_type)
    return rot(h, position_ids)


def _mask_kind(loaded: LoadedModel, l: int, ablate: frozenset) -> str:
    sliding = loaded.layer_type(l) == "sliding_attention" and loaded.sliding_window is not None and "sliding_mask" not in ablate
    return "sliding_attention" if sliding else "full_attention"


def _segments(parts_pos: list[np.ndarray], width: int, V: int, kind: str, window: int | None, cdt: torch.dtype,
              dev: torch.device) -> list[_Segment]:
    """Split a batch's rows into segments with one prefix range each, and build their masks (once per batch).

    Rows are laid out document by document, site by site (sorted by position), variant by variant,
    then the ``width`` window positions. A full-attention segment is one document's sites, keys
    [0, max p). A sliding segment groups neighbouring sites of one document whose positions lie
    within one window of the first, keys [min p - W + 1, max p): the masked excess is at most a window.
    Query (s, r) at absolute position p_s + r may see prefix key a when a < p_s and, in sliding
    blocks, a > p_s + r - W (transformers' convention: W keys including the query itself).
    """
    segs, r, s = [], 0, 0
    for part, pos in enumerate(parts_pos):
        groups: list[list[int]] = []
        for i, p in enumerate(pos):
            if groups and (kind == "full_attention" or p - pos[groups[-1][0]] < window):
                groups[-1].append(i)
            else:
                groups.append([i])
        for g in groups:
            ps = pos[g]
            lo = 0 if kind == "full_attention" else max(0, int(ps.min()) - window + 1)
            hi = int(ps.max())
            seg = _Segment(part, r, r + len(g) * V * width, s, s + len(g), lo, hi)
            if hi > lo:
                a = torch.arange(lo, hi, device=dev)  # [P]
                pt = torch.as_tensor(ps, device=dev)[:, None, None]  # [S, 1, 1]
                ok = a[None, None, :] < pt  # [S, 1, P]
                if kind == "sliding_attention":
                    q = pt + torch.arange(width, device=dev)[None, :, None]  # [S, Wr, 1]
                    ok = ok & (a[None, None, :] > q - window)  # [S, Wr, P]
                else:
                    ok = ok.expand(-1, width, -1)
                mask = torch.zeros(ok.shape, dtype=cdt, device=dev).masked_fill_(~ok, float("-inf"))
                seg.mask = mask[:, None, :, None, :]  # [S, 1, Wr, 1, P]: broadcast over variants and query groups
            segs.append(seg)
            r, s = seg.r1, seg.s1
    return segs


def _window_mask(width: int, kind: str, window: int | None, cdt: torch.dtype, dev: torch.device) -> torch.Tensor:
    """Additive ``[Wr, 1, Wr]`` mask within one variant's window: causal, and in sliding blocks fewer than W back."""
    i = torch.arange(width, device=dev)
    ok = i[None, :] <= i[:, None]
    if kind == "sliding_attention":
        ok &= (i[:, None] - i[None, :]) < window
    return torch.zeros(ok.shape, dtype=cdt, device=dev).masked_fill_(~ok, float("-inf"))[:, None, :]


def _readout_rows(loaded: LoadedModel, n_rows_per_chunk_item: int) -> int:
    """How many items (of ``n_rows_per_chunk_item`` vocab-wide rows) one readout chunk takes: memory-aware on CUDA."""
    vocab = int(getattr(loaded.text_config, "vocab_size", 32000))
    per_row = vocab * 4 * 4  # logits/log-probs of patched and clean rows, exp and the KL product, float32
    if loaded.device.type == "cuda":
        budget = min(0.25 * _free_bytes(loaded.device), 8 << 30)
    else:
        budget = 32 << 20  # CPU: these passes are memory-bound; chunks that stay in cache are faster than one big one
    return max(1, int(budget // (per_row * n_rows_per_chunk_item)))


@torch.no_grad()
def _window_pass(loaded: LoadedModel, layer: int, parts: list[tuple[Sequence[int], CleanState, list[SiteVariants]]],
                 ablate: frozenset = frozenset(), hook: str = RESID_POST) -> list[list[SiteResult]]:
    """Patch one batch of sites (of one or more documents; one variant count V and span k) in one window pass.

    ``parts``: (input_ids, clean state, sites sorted by position) per document. Returns the results
    in the same nesting and order.

    At ``resid_post`` the span's rows of the window's input (block L's output) are the variants' vectors and the
    pass runs blocks L+1..; at a hook inside block L the window's input rows are all clean (block L's input), the
    pass runs blocks L.., and in block L the hook's activation at the span's rows is replaced by the vectors. Block
    L's attention reads keys and values of its clean input, so only the span's rows of its output change, as in
    the naive path's full forward.
    """
    _supports_fast(loaded)
    sites = [s for _, _, ss in parts for s in ss]
    V, k = sites[0].n_variants, sites[0].span
    if any(s.n_variants != V or s.span != k for s in sites):
        raise ValueError("a window batch needs one variant count and one span length")
    dev, dt = loaded.device, loaded.dtype
    cdt = torch.promote_types(dt, torch.float32)
    Wr = k - 1 + N_OFFSETS  # window rows: the span, then 32 positions after its last one
    S = len(sites)
    r = torch.arange(Wr, device=dev)
    h_rows, normed_rows, positions, nxt, valid, parts_pos = [], [], [], [], [], []
    for ids, state, ss in parts:
        T = state.n_tokens
        pos = np.array([s.position for s in ss], dtype=np.int64)
        parts_pos.append(pos)
        absp = torch.as_tensor(pos, device=dev)[:, None] + r[None, :]  # [S_d, Wr]
        gather = absp.clamp_max(T - 1)  # rows past the end compute garbage that nothing valid reads
        h_rows.append(state.hidden_L[gather])
        normed_rows.append(state.final_hidden[gather])
        positions.append(absp)
        for s in ss:
            a, b = _next_tokens(ids, s.position, Wr)
            nxt.append(a)
            valid.append(b)
    vectors = torch.stack([s.span_vectors() for s in sites]).to(dev, dt)  # [S, V, k, width]
    h = torch.cat(h_rows)[:, None].expand(S, V, Wr, -1).clone()  # [S, V, Wr, d]
    if hook == RESID_POST:
        h[:, :, :k] = vectors
    h = h.view(1, S * V * Wr, -1)
    # the window's absolute positions p..p+Wr-1 per site: what the rotary embedding must see (GPT-2's learned
    # positions were added at the input, so they are in the block-L states already)
    absolute = torch.cat(positions) if "positions" not in ablate else r[None, :].expand(S, Wr)  # trap: from 0
    position_ids = absolute[:, None].expand(S, V, Wr).reshape(1, -1)  # [1, N]

    window = loaded.sliding_window
    start = window_start(layer, hook)
    if any(st.start not in (-1, start) for _, st, _ in parts):
        raise ValueError(f"clean states of another window start than block {start}")
    blocks = range(start, loaded.n_layers)
    kinds = {l: _mask_kind(loaded, l, ablate) for l in blocks}
    segments = {kind: _segments(parts_pos, Wr, V, kind, window, cdt, dev) for kind in set(kinds.values())}
    win_masks = {kind: _window_mask(Wr, kind, window, cdt, dev) for kind in segments}
    rope_kind = {loaded.layer_type(l) for l in blocks}
    pe = {t: _rotary(loaded, h, position_ids, "full_attention" if "local_rope" in ablate and t == "sliding_attention" else t)
          for t in rope_kind} if loaded.rotary_emb is not None else {}

    def splice(a: torch.Tensor) -> torch.Tensor:  # the hook's activation in block L: [1, S*V*Wr, width]
        a = a.view(S, V, Wr, -1).clone()
        a[:, :, :k] = vectors
        return a.view(1, S * V * Wr, -1)

    ctx = _WindowContext(loaded, layer, [st for _, st, _ in parts], segments, win_masks, kinds, V, Wr, cdt, ablate)
    inside = at_hook(loaded, layer, hook, splice) if hook != RESID_POST else contextlib.nullcontext()
    with _window_attention_active(loaded, ctx), inside:
        for l in blocks:
            rotary = {"position_embeddings": pe[loaded.layer_type(l)]} if pe else {}
            out = loaded.layers[l](h, attention_mask=None, position_ids=position_ids, **rotary)
            h = out[0] if isinstance(out, tuple) else out
    if ctx.seen != set(blocks):
        raise FastPathUnavailable(loaded.path, "architecture",
                                  f"{loaded.architecture}: blocks {sorted(set(blocks) - ctx.seen)} did not use the window attention",
                                  "set patch.method: naive for this model")

    # readout, vectorised over sites and variants; the clean row comes from the clean pass (normed hidden -> head)
    h = h.view(S, V, Wr, -1)
    normed = torch.cat(normed_rows)  # [S, Wr, d]
    nxt_t = torch.from_numpy(np.stack(nxt)).to(dev)  # [S, Wr]
    valid_t = torch.from_numpy(np.stack(valid)).to(dev)
    rdt = torch.promote_types(dt, torch.float32)
    kl = torch.empty(S, V, Wr, dtype=rdt, device=dev)
    ce, dce = torch.empty_like(kl), torch.empty_like(kl)
    ce_clean = torch.empty(S, Wr, dtype=rdt, device=dev)
    step = _readout_rows(loaded, (V + 1) * Wr)
    for a in range(0, S, step):
        b = min(S, a + step)
        lpc = log_probs(loaded, normed[a:b], ablate, normed=True)  # [s, Wr, vocab]
        lpp = log_probs(loaded, h[a:b], ablate)  # [s, V, Wr, vocab]
        n_, v_ = nxt_t[a:b], valid_t[a:b]
        kl[a:b], ce[a:b], dce[a:b] = readout(lpc[:, None], lpp, n_[:, None].expand(-1, V, -1), v_[:, None].expand(-1, V, -1))
        cc = -lpc.gather(-1, n_.clamp_min(0)[..., None])[..., 0]
        ce_clean[a:b] = torch.where(v_, cc, torch.full_like(cc, float("nan")))
        del lpc, lpp
    kl, ce, dce, ce_clean = (t.cpu().numpy() for t in (kl, ce, dce, ce_clean))
    results, i = [], 0
    for _, _, ss in parts:
        out_part = []
        for s in ss:
            out_part.append(_to_result(s, kl[i], ce[i], dce[i], ce_clean[i], valid[i]))
            i += 1
        results.append(out_part)
    return results


@torch.no_grad()
def fast_sites(loaded: LoadedModel, input_ids: Sequence[int], layer: int, sites: Sequence[SiteVariants],
               state: CleanState | None = None, ablate: Iterable[str] = (), hook: str = RESID_POST) -> list[SiteResult]:
    """Patch a batch of sites of one document (all with the same variant count V and span k) in one window pass."""
    ablate = frozenset(ablate)
    assert ablate <= ABLATIONS | FAMILY_ABLATIONS, ablate
    if not sites:
        return []
    state = state if state is not None else clean_pass(loaded, input_ids, layer, hook)
    order = sorted(range(len(sites)), key=lambda i: sites[i].position)
    res = _window_pass(loaded, layer, [(input_ids, state, [sites[i] for i in order])], ablate, hook)[0]
    out: list[SiteResult | None] = [None] * len(sites)
    for j, i in enumerate(order):
        out[i] = res[j]
    return out  # type: ignore[return-value]


# --------------------------------------------------------------------------- shards
def _free_bytes(device: torch.device) -> int:
    """Free accelerator memory, counting what torch's caching allocator holds but does not use."""
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def _site_bytes(loaded: LoadedModel, n_variants: int, span: int, doc_len: int) -> float:
    """Accelerator memory one site adds to a window batch (activations, attention scores), bytes."""
    cfg = loaded.text_config
    rows = n_variants * (span - 1 + N_OFFSETS)
    b = torch.finfo(loaded.dtype).bits // 8
    heads = int(cfg.num_attention_heads)
    ff = int(getattr(cfg, "intermediate_size", 4 * cfg.hidden_size))
    per_row = 12 * cfg.hidden_size * b + 3 * ff * b + heads * doc_len * (4 + b) + heads * (span - 1 + N_OFFSETS) * (4 + b)
    return rows * per_row


def auto_sites_per_batch(loaded: LoadedModel, n_variants: int, doc_len: int, span: int = 1) -> int:
    """Sites per window batch: from free accelerator memory on CUDA (at most 64), ~1024 rows on CPU."""
    rows = n_variants * (span - 1 + N_OFFSETS)
    if loaded.device.type != "cuda":
        return max(1, 1024 // rows)
    return int(max(1, min(64, (0.4 * _free_bytes(loaded.device)) // _site_bytes(loaded, n_variants, span, doc_len))))


def _clean_len(sites: Sequence[SiteVariants], n_tokens: int) -> int:
    """Tokens the clean pass needs: nothing after the last window's last position can affect any readout."""
    return min(n_tokens, max(s.position + s.span - 1 for s in sites) + N_OFFSETS + 1)


class _Progress:
    """Logs ``document i/n done`` as each document's last site is read out (a long shard shows where it is)."""

    def __init__(self, documents: Sequence[tuple[Sequence[int], Sequence[SiteVariants]]], names: Sequence[str],
                 label: str):
        self.left = [len(sites) for _, sites in documents]
        self.names, self.label = names, label
        self.done = 0
        self.n = sum(1 for n in self.left if n)

    def site_done(self, di: int) -> None:
        self.left[di] -= 1
        if self.left[di] == 0:
            self.done += 1
            log.info("patch %s: document %d/%d done (%s)", self.label, self.done, self.n, self.names[di])


def patch_documents(loaded: LoadedModel, documents: Sequence[tuple[Sequence[int], Sequence[SiteVariants]]], layer: int,
                    method: str = "fast", sites_per_batch: int | str = "auto", clean_cache: CleanCache | None = None,
                    names: Sequence[str] | None = None, ablate: Iterable[str] = (),
                    label: str = "sites", hook: str = RESID_POST) -> list[list[SiteResult]]:
    """Patch every site of several documents; returns each document's results in its sites' order.

    documents: (input_ids, sites) per document. Fast path: each document's clean pass once (from
    ``clean_cache`` where given), then window passes of up to ``sites_per_batch`` sites that may mix
    documents (sites grouped by variant count and span length, each document's sites by position), so
    short documents fill a batch together. Every site is checked before any model work. Each finished
    document is logged (``patch {label}: document i/n done``). ``hook``: where in block ``layer`` the vectors go
    (``causal_kl.hooks``; their width is the hook's, ``LoadedModel.hook_width``).

    A model the fast path cannot run (``FastPathUnavailable``) is patched by the naive path, and the
    call's log says so once (the model remembers it: later calls go straight to the naive path).
    """
    ablate = frozenset(ablate)
    names = list(names) if names is not None else [f"document {i}" for i in range(len(documents))]
    loaded.hook_module(layer, hook)  # one line when the model's family has no such hook
    for (ids, sites), name in zip(documents, names):
        _check_sites(ids, sites, loaded.hook_width(hook), name)
    if method not in ("fast", "naive"):
        raise CausalKLError("config", "patch.method", f"unknown method {method!r}", "use fast or naive")
    if method == "fast":
        if _NO_FAST_PATH not in loaded.extra:
            try:
                return _patch_fast(loaded, documents, layer, sites_per_batch, clean_cache, _Progress(documents, names, label), ablate,
                                   hook)
            except FastPathUnavailable as e:
                loaded.extra[_NO_FAST_PATH] = e.problem
        log.warning("patch %s: the fast path cannot run %s (%s): patching with the naive path instead (the same numbers, "
                    "a full forward per site)", label, loaded.path, loaded.extra[_NO_FAST_PATH])
    progress = _Progress(documents, names, label)
    out = []
    for di, (ids, sites) in enumerate(documents):
        out.append([naive_site(loaded, ids, layer, s, hook) for s in sites])
        for _ in sites:
            progress.site_done(di)
    return out


_NO_FAST_PATH = "fast_path_unavailable"
"""``LoadedModel.extra`` key: why the fast path cannot run the model (set by the first call that found out)."""


def method_used(loaded: LoadedModel, method: str) -> str:
    """The method that patches with ``method`` on this model: ``naive`` where ``fast`` was asked for and the fast path
    cannot run it (once a ``patch_documents`` call has found out), else ``method``. What provenance records."""
    return "naive" if method == "fast" and _NO_FAST_PATH in loaded.extra else method


def fast_path_unavailable(loaded: LoadedModel) -> str | None:
    """Why the fast path cannot run this model (None: it can, or no call has found out yet)."""
    return loaded.extra.get(_NO_FAST_PATH)


def _patch_fast(loaded: LoadedModel, documents: Sequence[tuple[Sequence[int], Sequence[SiteVariants]]], layer: int,
                sites_per_batch: int | str, clean_cache: CleanCache | None, progress: _Progress,
                ablate: frozenset, hook: str = RESID_POST) -> list[list[SiteResult]]:
    """The fast path of ``patch_documents``."""
    _supports_fast(loaded)
    results: list[list[SiteResult | None]] = [[None] * len(sites) for _, sites in documents]
    pending: dict[tuple[int, int], list] = {}  # (V, k) -> [(doc index, ids, state, site index, site, cost)]

    def run(batch: list) -> None:
        parts: dict[int, tuple] = {}
        for di, ids, st, si, s, _ in batch:
            parts.setdefault(di, (ids, st, [], []))
            parts[di][2].append(s)
            parts[di][3].append(si)
        out = _window_pass(loaded, layer, [(ids, st, ss) for ids, st, ss, _ in parts.values()], ablate, hook)
        for (d, (_, _, _, idx)), res in zip(parts.items(), out):
            for si, r in zip(idx, res):
                results[d][si] = r
                progress.site_done(d)

    for di, (ids, sites) in enumerate(documents):
        if not sites:
            continue
        ids = list(ids[: _clean_len(sites, len(ids))])
        state = clean_cache.get(loaded, ids, layer, hook) if clean_cache is not None else clean_pass(loaded, ids, layer, hook)
        limits: dict[tuple[int, int], int] = {}
        for si in sorted(range(len(sites)), key=lambda i: sites[i].position):
            s = sites[si]
            key = (s.n_variants, s.span)
            if key not in limits:  # per document: a longer prefix means fewer sites fit
                limits[key] = (auto_sites_per_batch(loaded, s.n_variants, len(ids), s.span) if sites_per_batch == "auto"
                               else int(sites_per_batch))
            queue = pending.setdefault(key, [])
            queue.append((di, ids, state, si, s, limits[key]))
            if len(queue) >= min(q[5] for q in queue):
                run(pending.pop(key))
        del state
    for batch in pending.values():
        run(batch)
    return results  # type: ignore[return-value]


def patch_document(loaded: LoadedModel, input_ids: Sequence[int], layer: int, sites: Sequence[SiteVariants],
                   method: str = "fast", sites_per_batch: int | str = "auto", doc: str = "document",
                   clean_cache: CleanCache | None = None, hook: str = RESID_POST) -> list[SiteResult]:
    """Patch every site of one document (see ``patch_documents``)."""
    if not sites:
        return []
    return patch_documents(loaded, [(input_ids, sites)], layer, method, sites_per_batch, clean_cache, [doc], hook=hook)[0]


def results_table(results: Sequence[SiteResult], route: str = "", include_clean: bool = False) -> pa.Table:
    """SiteResults -> PATCH rows plus a ``span`` column (int32); offsets past the document's end dropped.

    Offsets are counted from each span's last position; spans of k > 1 also have rows for the
    negative offsets -(k-1)..-1 (positions inside the span).
    """
    cols = {k: [] for k in ("site_id", "route", "condition", "offset", "kl", "ce", "delta_ce", "span")}
    for r in results:
        cols_idx = np.nonzero(r.valid)[0]
        offs = np.asarray(r.offsets)[cols_idx]
        rows = [(name, r.kl[v], r.ce[v], r.delta_ce[v]) for v, name in enumerate(r.names)]
        if include_clean:
            z = np.zeros(len(r.valid), dtype=np.float32)
            rows.insert(0, (CLEAN, z, r.clean_ce, z))
        n = len(cols_idx)
        for name, kl, ce, dce in rows:
            cols["site_id"] += [r.site_id] * n
            cols["route"] += [route] * n
            cols["condition"] += [name] * n
            cols["offset"] += offs.tolist()
            cols["kl"] += kl[cols_idx].tolist()
            cols["ce"] += ce[cols_idx].tolist()
            cols["delta_ce"] += dce[cols_idx].tolist()
            cols["span"] += [int(r.span)] * n
    from causal_kl.contracts import PATCH

    return pa.table(cols).cast(PATCH.schema())
