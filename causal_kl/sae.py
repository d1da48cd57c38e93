"""Sparse autoencoders as a reconstruction route: load, run in float32, check, write.

An SAE maps a residual vector ``x [d_in]`` to latents ``a [d_sae]`` and back. The definitions
are SAELens' (``sae_lens/saes/{standard,jumprelu,topk}_sae.py`` and ``SAE.process_sae_in`` in
``sae_lens/saes/sae.py``, read at sae-lens 6.54.12), step by step:

1. ``x`` is cast to float32 and normalised (``normalize_activations``, below);
2. ``b_dec`` is subtracted when ``apply_b_dec_to_input`` (SAELens' default: true);
3. ``pre = x @ W_enc + b_enc``;
4. the activation:
   ``standard``  ``a = relu(pre)``;
   ``jumprelu``  ``a = relu(pre) * (pre > threshold)``;
   ``topk``      keep the ``k`` largest entries of ``pre`` (after ``relu`` on those values), zero
                 the rest; with ``rescale_acts_by_decoder_norm`` ``pre`` is first multiplied by
                 the decoder row norms ``||W_dec[i]||`` and decode divides ``a`` by them again;
   ``gated``     (``sae_lens/saes/gated_sae.py``; no ``b_enc``) a gate and a magnitude path sharing ``W_enc``:
                 ``a = (x @ W_enc + b_gate > 0) * relu(x @ (W_enc * exp(r_mag)) + b_mag)``, with
                 ``b_gate``, ``b_mag``, ``r_mag`` each ``[d_sae]``;
5. decode: ``a @ W_dec + b_dec``, then the normalisation is undone.

``normalize_activations`` (SAELens' four inference settings):

``none``
    nothing.
``constant_norm_rescale``
    per vector, ``c = sqrt(d_in) / ||x||``; the SAE sees ``c x`` and decode returns ``out / c``.
``layer_norm``
    per vector, ``mu = mean(x)``, ``s = std(x)`` (unbiased, as ``torch.std``); the SAE sees
    ``(x - mu) / (s + 1e-5)`` and decode returns ``out * s + mu`` (no eps on the way out).
``expected_average_only_in``
    one constant ``f = sqrt(d_in) / E||x||`` estimated by SAELens' trainer over
    ``n_batches_for_norm_estimate`` training batches (``ActivationScaler.estimate_scaling_factor``).
    The SAE itself does nothing with it at run time: the trainer multiplies inputs by ``f`` and
    divides outputs by ``f`` outside the SAE. At the end of training the trainer folds ``f`` into
    the weights (``fold_activation_norm_scaling_factor``) and saves the final SAE with
    ``none``; only intermediate checkpoints keep ``expected_average_only_in``, with ``f`` in
    ``activation_scaler.json`` beside ``cfg.json``. Hub releases keep ``f`` in SAELens'
    ``pretrained_saes.yaml`` (``norm_scaling_factor``), which ``SAE.from_pretrained`` folds in.
    Here ``f`` is read from ``activation_scaler.json`` or passed as ``norm_scaling_factor``; if
    neither gives one, loading fails (running such an SAE on raw activations would be wrong).

Formats read (``load_sae`` picks by the files present):

* **SAELens directory**: ``cfg.json`` + ``sae_weights.safetensors`` (``W_enc [d_in, d_sae]``,
  ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]``, ``threshold [d_sae]`` for
  JumpReLU, or ``log_threshold`` which is exponentiated; ``b_gate``, ``b_mag``, ``r_mag`` and no ``b_enc`` for
  gated). ``cfg.json`` spellings supported:
  SAELens >= 6 (``architecture`` top level; ``hook_name``, ``hook_head_index``, ``hf_hook_name``,
  ``sae_lens_version`` nested under ``metadata``) and 3.x-5.x (everything top level:
  ``hook_name`` or the older ``hook_point``; ``hook_layer`` or ``hook_point_layer``;
  ``activation_fn`` or ``activation_fn_str``; TopK as ``activation_fn: "topk"`` with
  ``activation_fn_kwargs: {"k": ...}`` or a top-level ``k``; ``normalize_activations`` as a
  bool, meaning ``expected_average_only_in`` when true, or a string; no ``architecture`` means
  ``standard``). ``architecture`` is also looked for under ``metadata``; ``jump_relu`` is read
  as ``jumprelu``. ``d_in``/``d_sae`` may be absent (taken from the tensors) but must agree
  with them when present. A ``scaling_factor`` tensor of ones (written by some 4.x/5.x
  versions) is ignored.
* **Gemma Scope** (``params.npz``: ``W_enc``, ``W_dec``, ``b_enc``, ``b_dec``, ``threshold``,
  lower-case ``w_enc``/``w_dec`` also read) and **Gemma Scope 2** (``params.safetensors`` with
  the same tensors, ``config.json`` beside it): JumpReLU, ``apply_b_dec_to_input`` false, no
  normalisation (as SAELens' ``gemma_2``/``gemma_3`` loaders set them).
* **EleutherAI sparsify** (a folder per hookpoint, named after it: ``layers.L``; ``cfg.json`` =
  ``SparseCoderConfig`` + ``d_in``, ``sae.safetensors`` with ``encoder.weight [num_latents, d_in]``,
  ``encoder.bias [num_latents]``, ``W_dec [num_latents, d_in]``, ``b_dec [d_in]``): sparsify's
  ``SparseCoder.encode`` is ``top_k(relu((x - b_dec) @ encoder.weight.T + encoder.bias))`` and
  ``decode`` is ``acts @ W_dec + b_dec`` (sparsify/sparse_coder.py, fused_encoder.py, eai-sparsify
  1.3.3), i.e. this module's TopK with ``W_enc = encoder.weight.T``, ``apply_b_dec_to_input``, no
  normalisation (``causal_kl.sae_format.read_sparsify_cfg`` has what is refused). The hook is the
  folder's name: ``layers.L`` is block L's forward output, layer L.

* **dictionary_learning** (a folder of ``config.json`` + ``ae.pt``), **Qwen-Scope** (``layer{L}.sae.pt``),
  **Goodfire** and **DeepSeek-R1** (``.pt``/``.pth`` state dicts): SAELens' ``dictionary_learning_1``, ``qwen_scope``,
  ``goodfire`` and ``deepseek_r1`` loaders' settings and tensor names, in ``causal_kl.sae_dictionary`` (pickles read
  by ``torch.load(weights_only=True)`` only); temporal SAEs are refused there.
* **Llama Scope** (and its R1-distill series), **mwhanna's Qwen3 transcoders**, **Gemma Scope's gemma-2
  transcoders** (``params.npz`` above, in a ``-transcoders`` repo) and **Connor & Rob's GPT-2 hook_z** ``.pt`` SAEs:
  read as SAELens' loaders read them by ``causal_kl.sae_scope`` (its docstring has the layouts), with any
  dataset-norm scaling folded into the weights as ``SAE.from_pretrained`` folds it.

Every safetensors file's size is checked against its header's data offsets before it is read
(``causal_kl.checkpoints.read_safetensors_header``): a truncated file is one line, as at parse time.

Transcoders (SAELens' ``transcoder``, ``skip_transcoder``, ``jumprelu_transcoder``,
``jumprelu_skip_transcoder``, ``sae_lens/saes/transcoder.py``; Gemma Scope 2 ``transcoder`` folders)
read ``x [d_in]`` at one hook and predict ``[d_out]`` at a later one: the encoder above (ReLU or
JumpReLU, no ``b_dec`` subtracted, no normalisation), ``a @ W_dec + b_dec`` with ``W_dec [d_sae, d_out]``,
plus ``x @ W_skip.T`` (``W_skip [d_out, d_in]``, the raw input) for the skip ones; Gemma Scope 2 keeps the
skip term as ``affine_skip_connection [d_in, d_out]``. ``point_in``/``point_out`` say where an SAE reads
and writes (``causal_kl.hooks.Point``; the same point for an SAE); ``hook_z`` SAEs (SAELens'
``reshape_activations: hook_z``) read ``attn.hook_z`` flattened to heads x head_dim, which is what
``o_proj``'s input already is.

Refused with a one-line ``CausalKLError`` (file, field, fix): a missing path or file, invalid
JSON, an unknown or unsupported architecture (batchtopk as such, ...), another activation
function (``tanh-relu``), per-head SAEs, a transcoder with normalisation or ``apply_b_dec_to_input``,
``covariance_whitening``, missing tensors, wrong shapes, a non-unit ``scaling_factor``, and, in
``check_compatible`` (``causal_kl.sae_format.sae_points``), a width other than the hook's or an SAE
trained at another hook/layer than the one it is used at.

Hooks and layers. The design's layer ``L`` is the output of decoder block ``L`` (HF
``output_hidden_states[L + 1]``). SAELens' ``blocks.L.hook_resid_post`` is exactly that;
``blocks.L.hook_resid_pre`` is the *input* of block ``L``, i.e. the output of block ``L - 1``
(layer ``L - 1``; ``blocks.0.hook_resid_pre`` is the embedding output, which no layer names);
HF-style names ``model.layers.L.output`` / ``layers.L`` (Gemma Scope 2's ``hf_hook_point_in``,
sparsify) are block ``L``'s output. The other hooks of a block (``hook_resid_mid``, ``hook_mlp_out``,
``attn.hook_z``, ``hook_mlp_in``, ...; module paths by the families' tables) are points of that block
(``causal_kl.hooks``), spliced there by a route that takes the SAE's own hook (``route_points``);
``hook_embed`` is no point.
When ``cfg.json`` names no hook, nothing can be checked and nothing is.

Sparsity (``SparseAutoencoder.sparsity``), as SAELens' ``get_sparsity_and_variance_metrics``
reports it: L0 = mean over vectors of the number of latents ``!= 0``; a latent is *dead* on a
batch when it is ``== 0`` on every vector of it (SAELens' ``feature_density == 0``; its trainer's
``dead_features`` is the same test over a window of ``dead_feature_window`` steps).
"""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from causal_kl.checkpoints import read_safetensors_header
from causal_kl.errors import CausalKLError
from causal_kl.io import atomic_path, read_json
from causal_kl import sae_scope

from causal_kl.sae_format import (  # the formats' torch-free rules, shared with the parse-time route check
    ARCHITECTURES,
    GEMMA_SCOPE_NPZ,
    GEMMA_SCOPE_SAFETENSORS,
    NORMALIZATIONS,
    SAELENS_CFG,
    SAELENS_SCALER,
    SAELENS_WEIGHTS,
    SPARSIFY_CFG,
    SPARSIFY_WEIGHTS,
    GEMMA_SCOPE_SKIP,
    GATED_TENSORS,
    SAE_WEIGHTS_FIX,
    HookSite,
    base_architecture,
    check_required_tensors,
    gemma_scope_architecture,
    gemma_scope_hooks,
    has_skip,
    is_transcoder,
    sae_points,
    check_sparsify_tensors,
    sparsify_names,
    gemma_scope_config,
    gemma_scope_names,
    locate_sae,
    missing_scaler_error,
    parse_hook_name,
    SAE_CONFIG_FIX,
    read_saelens_cfg,
    read_sparsify_cfg,
    required_tensors,
    saelens_files,
    scaler_factor,
)

DICTIONARY_FORMATS = ("dictionary_learning", "qwen_scope", "goodfire", "deepseek_r1")  # = sae_dictionary.FORMATS

SAELENS_LAYOUT_VERSION = "6.0.0"
"""``metadata.sae_lens_version`` written by ``save_sae``: the cfg.json layout (SAELens >= 6),
so that SAELens reads our files without its pre-6.0 conversion."""

LAYER_NORM_EPS = 1e-5  # SAELens' run_time_activation_ln_in default


# ---------------------------------------------------------------------------------- the model
@dataclass
class SparsityStats:
    """L0 and dead latents of an SAE on a batch of vectors (see the module docstring)."""

    l0: float  # mean number of latents != 0 per vector
    dead_share: float  # share of latents == 0 on every vector
    n_dead: int
    n_vectors: int
    d_sae: int


@dataclass
class SparseAutoencoder:
    """An SAE's tensors (float32) and settings. Shapes: ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``,
    ``W_dec [d_sae, d_in]``, ``b_dec [d_in]``, ``threshold [d_sae]`` (JumpReLU only).

    Build one with ``load_sae`` or directly; ``to(device)`` moves it. ``source`` names the file
    it came from in error messages.
    """

    W_enc: torch.Tensor
    b_enc: torch.Tensor | None  # None for gated (b_gate, b_mag, r_mag instead)
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    architecture: str = "standard"
    threshold: torch.Tensor | None = None
    W_skip: torch.Tensor | None = None  # skip transcoders: [d_out, d_in]
    b_gate: torch.Tensor | None = None  # gated only: [d_sae] each
    b_mag: torch.Tensor | None = None
    r_mag: torch.Tensor | None = None
    k: int | None = None
    rescale_acts_by_decoder_norm: bool = False
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    norm_scaling_factor: float | None = None  # expected_average_only_in only
    hook_name: str | None = None
    hook_name_out: str | None = None  # transcoders: where the output is spliced
    hf_hook_name: str | None = None  # the transformers module path the hook was read from (a family reads it)
    hf_hook_name_out: str | None = None
    hook_z: bool = False  # SAELens' reshape_activations: hook_z (the input is attn.hook_z)
    source: str = "<in memory>"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        src = self.source
        if self.architecture not in ARCHITECTURES:
            raise CausalKLError(src, "architecture", f"unknown SAE architecture {self.architecture!r}",
                                f"use one of {', '.join(ARCHITECTURES)}")
        if self.normalize_activations not in NORMALIZATIONS:
            raise CausalKLError(src, "normalize_activations", f"unsupported value {self.normalize_activations!r}",
                                f"use one of {', '.join(NORMALIZATIONS)}")
        if self.normalize_activations == "expected_average_only_in":
            f = self.norm_scaling_factor
            if f is None or not (math.isfinite(f) and f > 0):
                raise CausalKLError(src, "normalize_activations",
                                    f"expected_average_only_in needs its scaling factor, got {f!r}",
                                    f"put {SAELENS_SCALER} (written by SAELens' trainer) beside cfg.json, or pass "
                                    "norm_scaling_factor (SAELens' pretrained_saes.yaml lists it per hub SAE)")
        tensors = {"W_enc": self.W_enc, "W_dec": self.W_dec, "b_dec": self.b_dec}
        if self.architecture == "gated":
            for name in GATED_TENSORS:
                if getattr(self, name) is None:
                    raise CausalKLError(src, name, f"a gated SAE needs {', '.join(GATED_TENSORS)} [d_sae]",
                                        "save the gated SAE's gate and magnitude tensors with its weights")
                tensors[name] = getattr(self, name)
            self.b_enc = None  # SAELens' GatedSAE has none: the gate and magnitude biases take its place
        else:
            tensors["b_enc"] = self.b_enc
        if self.base == "jumprelu":
            if self.threshold is None:
                raise CausalKLError(src, "threshold", "a JumpReLU SAE needs a threshold tensor [d_sae]",
                                    "save the SAE's threshold with its weights")
            tensors["threshold"] = self.threshold
        if has_skip(self.architecture):
            if self.W_skip is None:
                raise CausalKLError(src, "W_skip", "a skip transcoder needs its skip matrix W_skip [d_out, d_in]",
                                    "save the transcoder's W_skip with its weights")
            tensors["W_skip"] = self.W_skip
        if self.transcoder and (self.apply_b_dec_to_input or self.normalize_activations != "none"):
            raise CausalKLError(src, "apply_b_dec_to_input" if self.apply_b_dec_to_input else "normalize_activations",
                                "a transcoder runs with apply_b_dec_to_input false and normalize_activations none",
                                "save the transcoder with those settings (SAELens' Transcoder refuses the others)")
        for name, t in tensors.items():
            setattr(self, name, torch.as_tensor(t).detach().to(torch.float32))
        if self.W_enc.ndim != 2:
            raise CausalKLError(src, "W_enc", f"shape {tuple(self.W_enc.shape)} is not [d_in, d_sae]",
                                "store W_enc as a [d_in, d_sae] matrix")
        d_in, d_sae = self.W_enc.shape
        d_out = int(self.W_dec.shape[-1]) if self.transcoder and self.W_dec.ndim == 2 else d_in
        expected = {"W_dec": (d_sae, d_out), "b_dec": (d_out,)}
        for name in GATED_TENSORS if self.architecture == "gated" else ("b_enc",):
            expected[name] = (d_sae,)
        if self.base == "jumprelu":
            expected["threshold"] = (d_sae,)
        if has_skip(self.architecture):
            expected["W_skip"] = (d_out, d_in)
        for name, shape in expected.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise CausalKLError(src, name, f"shape {got} does not fit W_enc [d_in={d_in}, d_sae={d_sae}] (expected {shape})",
                                    "write the SAE's tensors with matching shapes (W_enc [d_in, d_sae], W_dec [d_sae, d_in])")
        if self.architecture == "topk":
            if self.k is None or not 1 <= int(self.k) <= d_sae:
                raise CausalKLError(src, "k", f"a TopK SAE needs 1 <= k <= d_sae={d_sae}, got {self.k!r}",
                                    "set k in cfg.json (or activation_fn_kwargs.k)")
            self.k = int(self.k)
        if self.hook_name is not None:
            self.hook_name = str(self.hook_name)

    # ------------------------------------------------------------------ shape and placement
    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.W_enc.shape[1])

    @property
    def d_out(self) -> int:
        """The output's width: ``d_in`` for an SAE, the output hook's for a transcoder."""
        return int(self.W_dec.shape[1])

    @property
    def base(self) -> str:
        """The encoder's activation: ``standard``, ``jumprelu`` or ``topk`` (a transcoder's is its architecture's)."""
        return base_architecture(self.architecture)

    @property
    def transcoder(self) -> bool:
        return is_transcoder(self.architecture)

    @property
    def point_in(self):
        """The point (``causal_kl.hooks.Point``) the SAE reads, from its files alone (None: not named, or no hook of
        a block); a route's point is ``causal_kl.routes.sae.route_points``' (it knows the model's family)."""
        name = self.hf_hook_name or self.hook_name
        return parse_hook_name(name).point if name else None

    @property
    def point_out(self):
        """The point its output replaces: ``point_in`` for an SAE, the output hook for a transcoder."""
        if not self.transcoder:
            return self.point_in
        name = self.hf_hook_name_out or self.hook_name_out
        return parse_hook_name(name).point if name else None

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    @property
    def hook(self) -> HookSite | None:
        return parse_hook_name(self.hook_name) if self.hook_name else None

    @property
    def layer(self) -> int | None:
        """The design's layer this SAE was trained at (None when unknown or not a block output)."""
        site = self.hook
        return site.layer if site else None

    def to(self, device: str | torch.device) -> "SparseAutoencoder":
        """Move every tensor to ``device`` (in place); returns self."""
        for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold", "W_skip", *GATED_TENSORS):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.to(device))
        return self

    # ------------------------------------------------------------------------- the checks
    def check_compatible(self, d_model: int | None = None, layer: int | None = None, *, check_hook: bool = True,
                         route_hook: str | None = "resid_post", model_config: dict | None = None,
                         model: str = "the model", check_hook_fix: str | None = None):
        """Raise a ``CausalKLError`` if this SAE cannot be spliced at ``layer`` of a model of width ``d_model``; returns
        ``(point_in, point_out)`` (``causal_kl.sae_format.sae_points``: the parse-time check's rules, word for word).

        By default the route splices the residual stream (``route_hook`` resid_post: the SAE's files must name
        ``blocks.{layer}.hook_resid_post`` or an equivalent, or nothing); ``route_hook=None`` takes the SAE's own hook
        (a sub-layer route), ``model_config`` (the model's config.json) adds its family's hooks and attention width.
        Without ``layer`` only the widths are checked.
        """
        if layer is None:
            if d_model is not None and self.d_in != int(d_model) and not self.hook_z:
                raise CausalKLError(self.source, "d_in", f"the SAE reads vectors of width {self.d_in} but the model's width is {d_model}",
                                    "use an SAE trained on this model (d_in = hidden_size)")
            return None
        return sae_points(self.source, d_in=self.d_in, d_out=self.d_out, hook_name=self.hook_name,
                          hook_name_out=self.hook_name_out, hf_hook_name=self.hf_hook_name,
                          hf_hook_name_out=self.hf_hook_name_out, transcoder=self.transcoder, hook_z=self.hook_z,
                          layer=int(layer), check_hook=check_hook, route_hook=route_hook, d_model=d_model,
                          model_config=model_config, model=model, check_hook_fix=check_hook_fix)

    # ---------------------------------------------------------------------- the computation
    def _as_input(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(x)
        if x.ndim != 2 or x.shape[1] != self.d_in:
            raise ValueError(f"expected vectors [n, d_in={self.d_in}], got {tuple(x.shape)}")
        return x.to(self.device, torch.float32)

    def _normalise(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """``x [n, d_in]`` -> (what the SAE sees ``[n, d_in]``, what decode needs to undo it)."""
        mode = self.normalize_activations
        if mode == "constant_norm_rescale":
            coeff = (self.d_in ** 0.5) / x.norm(dim=-1, keepdim=True)
            return x * coeff, (coeff,)
        if mode == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            centred = x - mu
            std = centred.std(dim=-1, keepdim=True)
            return centred / (std + LAYER_NORM_EPS), (mu, std)
        if mode == "expected_average_only_in":
            return x * self.norm_scaling_factor, ()
        return x, ()

    def _denormalise(self, out: torch.Tensor, stats: tuple) -> torch.Tensor:
        mode = self.normalize_activations
        if mode == "constant_norm_rescale":
            return out / stats[0]
        if mode == "layer_norm":
            mu, std = stats
            return out * std + mu
        if mode == "expected_average_only_in":
            return out / self.norm_scaling_factor
        return out

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        sae_in, stats = self._normalise(x)
        if self.apply_b_dec_to_input:
            sae_in = sae_in - self.b_dec
        if self.architecture == "gated":  # SAELens' GatedSAE.encode: the gate decides, the magnitude path sizes
            gate = (sae_in @ self.W_enc + self.b_gate) > 0
            return torch.relu(sae_in @ (self.W_enc * self.r_mag.exp()) + self.b_mag) * gate.to(sae_in.dtype), stats
        pre = sae_in @ self.W_enc + self.b_enc  # [n, d_sae]
        if self.base == "standard":
            acts = torch.relu(pre)
        elif self.base == "jumprelu":
            acts = torch.relu(pre) * (pre > self.threshold).to(pre.dtype)
        else:  # topk
            if self.rescale_acts_by_decoder_norm:
                pre = pre * self.W_dec.norm(dim=-1)
            values, indices = torch.topk(pre, k=self.k, dim=-1, sorted=False)
            acts = torch.zeros_like(pre).scatter_(-1, indices, torch.relu(values))
        return acts, stats

    def _decode(self, acts: torch.Tensor, stats: tuple, x: torch.Tensor | None = None) -> torch.Tensor:
        if self.architecture == "topk" and self.rescale_acts_by_decoder_norm:
            acts = acts / self.W_dec.norm(dim=-1)
        out = self._denormalise(acts @ self.W_dec + self.b_dec, stats)
        if self.W_skip is not None and has_skip(self.architecture):  # SkipTranscoder.forward: + x @ W_skip.T, raw x
            out = out + x @ self.W_skip.T
        return out

    def _needs_input_to_decode(self) -> bool:
        return self.normalize_activations in ("constant_norm_rescale", "layer_norm") or has_skip(self.architecture)

    @torch.no_grad()
    def encode(self, x: torch.Tensor | np.ndarray, batch_size: int | None = None) -> torch.Tensor:
        """Latents of ``x [n, d_in]``: ``[n, d_sae]`` float32 on the SAE's device, ``batch_size`` rows at a time."""
        x = self._as_input(x)
        parts = [self._encode(chunk)[0] for chunk in _chunks(x, batch_size)]
        return torch.cat(parts) if parts else x.new_zeros((0, self.d_sae))

    @torch.no_grad()
    def decode(self, acts: torch.Tensor, x: torch.Tensor | np.ndarray | None = None,
               batch_size: int | None = None) -> torch.Tensor:
        """Reconstruction ``[n, d_out]`` from latents ``acts [n, d_sae]``.

        ``constant_norm_rescale`` and ``layer_norm`` undo the normalisation with the statistics of
        the vectors the latents were encoded from (SAELens keeps them on the module between
        ``encode`` and ``decode``); pass those vectors as ``x [n, d_in]`` for these two settings, and for a skip
        transcoder (its skip term reads them).
        """
        acts = torch.as_tensor(acts).to(self.device, torch.float32)
        if acts.ndim != 2 or acts.shape[1] != self.d_sae:
            raise ValueError(f"expected latents [n, d_sae={self.d_sae}], got {tuple(acts.shape)}")
        if self._needs_input_to_decode():
            if x is None:
                raise ValueError(f"normalize_activations={self.normalize_activations!r}: decode needs the encoded vectors x")
            x = self._as_input(x)
            if len(x) != len(acts):
                raise ValueError(f"{len(acts)} latent rows but {len(x)} input rows")
            parts = [self._decode(a, self._normalise(xc)[1], xc) for a, xc in zip(_chunks(acts, batch_size), _chunks(x, batch_size))]
        else:
            parts = [self._decode(a, ()) for a in _chunks(acts, batch_size)]
        return torch.cat(parts) if parts else acts.new_zeros((0, self.d_out))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor | np.ndarray, batch_size: int | None = 4096) -> torch.Tensor:
        """``decode(encode(x))`` for ``x [n, d_in]``: ``[n, d_out]`` float32 on the SAE's device, batched (a transcoder's
        prediction of its output hook, with the skip term ``x @ W_skip.T`` for a skip transcoder)."""
        x = self._as_input(x)
        parts = []
        for chunk in _chunks(x, batch_size):
            acts, stats = self._encode(chunk)
            parts.append(self._decode(acts, stats, chunk))
        return torch.cat(parts) if parts else x.new_zeros((0, self.d_out))

    @torch.no_grad()
    def sparsity(self, x: torch.Tensor | np.ndarray, batch_size: int | None = 4096) -> SparsityStats:
        """L0 and dead-latent share of the SAE on ``x [n, d_in]`` (definitions in the module docstring)."""
        x = self._as_input(x)
        if len(x) == 0:
            raise ValueError("sparsity of an empty batch")
        active_total = 0.0
        ever = torch.zeros(self.d_sae, dtype=torch.bool, device=self.device)
        for chunk in _chunks(x, batch_size):
            active = self._encode(chunk)[0] != 0  # [b, d_sae]
            active_total += float(active.sum())
            ever |= active.any(dim=0)
        n_dead = int((~ever).sum())
        return SparsityStats(l0=active_total / len(x), dead_share=n_dead / self.d_sae, n_dead=n_dead,
                             n_vectors=len(x), d_sae=self.d_sae)


def _chunks(t: torch.Tensor, batch_size: int | None):
    if batch_size is None or batch_size >= len(t):
        return [t] if len(t) else []
    return list(torch.split(t, int(batch_size)))


def explained_variance(x: torch.Tensor | np.ndarray, x_hat: torch.Tensor | np.ndarray) -> float:
    """SAELens' ``explained_variance``: ``1 - mean ||x - x_hat||^2 / (mean ||x||^2 - ||mean x||^2)``, rows ``[n, d]``, float64."""
    x = np.asarray(torch.as_tensor(x).detach().cpu(), dtype=np.float64)
    x_hat = np.asarray(torch.as_tensor(x_hat).detach().cpu(), dtype=np.float64)
    total_variance = float((x ** 2).sum(axis=1).mean() - (x.mean(axis=0) ** 2).sum())
    mse = float(((x - x_hat) ** 2).sum(axis=1).mean())
    return 1.0 - mse / total_variance


# ------------------------------------------------------------------------------- reading
def load_sae(path: str | Path, device: str | torch.device = "cpu", *, d_model: int | None = None,
             layer: int | None = None, norm_scaling_factor: float | None = None,
             hook_name: str | None = None, cfg_overrides: dict | None = None) -> SparseAutoencoder:
    """Load an SAE (SAELens directory, Gemma Scope ``params.npz`` or Gemma Scope 2 ``params.safetensors``,
    EleutherAI sparsify folder, or a format of ``causal_kl.sae_dictionary``: a dictionary_learning folder, a
    Qwen-Scope, Goodfire or DeepSeek-R1 ``.pt``/``.pth``).

    ``path`` is the directory or the weights file. With ``d_model``/``layer`` the SAE is checked
    against the model and layer it will be used at (``check_compatible``). ``hook_name``
    overrides the hook the files say (or do not say) the SAE was trained at. ``norm_scaling_factor`` and
    ``cfg_overrides`` (keys put over a SAELens ``cfg.json``) are what a SAELens release lists for the SAE
    (``causal_kl.sae_hub``); SAELens folds the factor in only for ``expected_average_only_in``, and so does this.
    """
    p = Path(path)
    if not p.exists():
        raise CausalKLError(p, "sae path", "does not exist",
                            f"point it at an SAE directory ({SAELENS_CFG} + {SAELENS_WEIGHTS}) or a Gemma Scope {GEMMA_SCOPE_NPZ}")
    fmt, found = locate_sae(p)
    if fmt in DICTIONARY_FORMATS:  # dictionary_learning, qwen_scope, goodfire, deepseek_r1: causal_kl.sae_dictionary
        from causal_kl import sae_dictionary

        sae = sae_dictionary.load(fmt, found, cfg_overrides)
        if hook_name is not None:
            sae.hook_name, sae.hf_hook_name = hook_name, None
    elif fmt in sae_scope.FORMATS:  # Llama Scope, mwhanna's transcoders, hook_z .pt files (causal_kl.sae_scope)
        sae = sae_scope.load(fmt, found, norm_scaling_factor)
        if hook_name is not None:
            sae.hook_name = hook_name
    elif fmt in ("saelens", "sparsify"):
        sae = (load_saelens(found, norm_scaling_factor=norm_scaling_factor, cfg_overrides=cfg_overrides)
               if fmt == "saelens" else load_sparsify(found))
        if hook_name is not None:
            sae.hook_name = hook_name
    else:
        sae = load_gemma_scope(found, hook_name=hook_name)
    return _finish_load(sae, device, d_model, layer)


def _finish_load(sae: SparseAutoencoder, device, d_model, layer) -> SparseAutoencoder:
    sae.check_compatible(d_model=d_model, layer=layer)
    return sae.to(device)


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    read_safetensors_header(path, SAE_WEIGHTS_FIX)  # a truncated file: the one line the parse-time check gives
    try:
        return dict(load_file(str(path)))
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        # bfloat16 cannot be read into numpy: go through torch
        try:
            from safetensors.torch import load_file as load_torch

            return {k: v.float().numpy() for k, v in load_torch(str(path)).items()}
        except Exception:
            raise CausalKLError(path, None, f"not a readable safetensors file ({str(e).splitlines()[0]})",
                                "re-save the SAE weights with safetensors") from e


def load_saelens(path: str | Path, norm_scaling_factor: float | None = None,
                 cfg_overrides: dict | None = None) -> SparseAutoencoder:
    """Read a SAELens SAE directory (``cfg.json`` + ``sae_weights.safetensors``) on the CPU; ``cfg_overrides`` go over
    ``cfg.json``'s top-level keys, as SAELens' loaders apply a release's ``config_overrides``."""
    d = Path(path)
    cfg_path, weights_path = saelens_files(d)
    raw = {**read_json(cfg_path, SAE_CONFIG_FIX), **(cfg_overrides or {})}
    cfg = read_saelens_cfg(raw, cfg_path)
    tensors = _read_safetensors(weights_path)
    if "threshold" not in tensors and "log_threshold" in tensors:
        tensors["threshold"] = np.exp(tensors["log_threshold"])
    if "scaling_factor" in tensors:
        if not np.allclose(tensors["scaling_factor"], 1.0):
            raise CausalKLError(weights_path, "scaling_factor", "a fine-tuning scaling factor other than 1 is not supported",
                                "fold it into W_dec (W_dec *= scaling_factor[:, None]) and drop it")
    check_required_tensors(tensors, cfg["architecture"], weights_path)
    d_in, d_sae = np.shape(tensors["W_enc"]) if np.ndim(tensors["W_enc"]) == 2 else (None, None)
    for name in ("d_in", "d_sae"):
        stated, actual = cfg[name], {"d_in": d_in, "d_sae": d_sae}[name]
        if stated is not None and actual is not None and stated != actual:
            raise CausalKLError(weights_path, "W_enc", f"shape {np.shape(tensors['W_enc'])} disagrees with cfg.json {name}={stated}",
                                f"W_enc must be [d_in, d_sae] = [{cfg['d_in']}, {cfg['d_sae']}]; re-save the SAE")
    if cfg["d_out"] is not None and np.ndim(tensors["W_dec"]) == 2 and np.shape(tensors["W_dec"])[1] != cfg["d_out"]:
        raise CausalKLError(weights_path, "W_dec", f"shape {np.shape(tensors['W_dec'])} disagrees with cfg.json d_out={cfg['d_out']}",
                            f"W_dec must be [d_sae, d_out] = [{cfg['d_sae']}, {cfg['d_out']}]; re-save the transcoder")
    if cfg["normalize_activations"] == "expected_average_only_in" and norm_scaling_factor is None:
        norm_scaling_factor = scaler_factor(d)
        if norm_scaling_factor is None:
            raise missing_scaler_error(cfg_path, f"put SAELens' {SAELENS_SCALER} beside cfg.json, or pass norm_scaling_factor "
                                                 "(SAELens' pretrained_saes.yaml lists it per hub SAE)")
    gated = {n: torch.from_numpy(np.asarray(tensors[n])) for n in GATED_TENSORS} if cfg["architecture"] == "gated" else {}
    sae = SparseAutoencoder(
        W_enc=torch.from_numpy(np.asarray(tensors["W_enc"])),
        b_enc=torch.from_numpy(np.asarray(tensors["b_enc"])) if "b_enc" in tensors and not gated else None,
        W_dec=torch.from_numpy(np.asarray(tensors["W_dec"])), b_dec=torch.from_numpy(np.asarray(tensors["b_dec"])), **gated,
        threshold=torch.from_numpy(np.asarray(tensors["threshold"])) if base_architecture(cfg["architecture"]) == "jumprelu" else None,
        W_skip=torch.from_numpy(np.asarray(tensors["W_skip"])) if has_skip(cfg["architecture"]) else None,
        architecture=cfg["architecture"], k=cfg["k"], rescale_acts_by_decoder_norm=cfg["rescale_acts_by_decoder_norm"],
        apply_b_dec_to_input=cfg["apply_b_dec_to_input"], normalize_activations=cfg["normalize_activations"],
        norm_scaling_factor=norm_scaling_factor, hook_name=cfg["hook_name"], hook_name_out=cfg["hook_name_out"],
        hf_hook_name=cfg["hf_hook_name"], hf_hook_name_out=cfg["hf_hook_name_out"], hook_z=cfg["hook_z"],
        source=str(weights_path),
        metadata={"model_name": cfg["model_name"], "hook_layer": cfg["hook_layer"], "cfg": raw},
    )
    sae.source = str(cfg_path)  # tensor errors above name the weights file; later ones (d_in, hook) the config
    return sae


def load_sparsify(path: str | Path) -> SparseAutoencoder:
    """Read an EleutherAI sparsify SAE folder (``cfg.json`` + ``sae.safetensors``) on the CPU, as the TopK SAE it is
    (``W_enc = encoder.weight.T``; see the module docstring). The hook is the folder's name (``layers.L``)."""
    d = Path(path)
    cfg_path, weights_path = d / SPARSIFY_CFG, d / SPARSIFY_WEIGHTS
    for f in (cfg_path, weights_path):
        if not f.exists():
            raise CausalKLError(f, f.name, "not found",
                                f"a sparsify SAE folder holds {SPARSIFY_CFG} and {SPARSIFY_WEIGHTS} (SparseCoder.save_to_disk writes both)")
    raw = read_json(cfg_path, SAE_CONFIG_FIX)
    cfg = read_sparsify_cfg(raw, cfg_path, d)
    tensors = sparsify_names(_read_safetensors(weights_path), transpose=lambda w: np.asarray(w).T)
    check_sparsify_tensors({k: np.shape(v) for k, v in tensors.items()}, cfg, weights_path, cfg_path)
    sae = SparseAutoencoder(
        W_enc=torch.from_numpy(np.ascontiguousarray(np.asarray(tensors["encoder.weight"]).T)),
        b_enc=torch.from_numpy(np.asarray(tensors["encoder.bias"])),
        W_dec=torch.from_numpy(np.asarray(tensors["W_dec"])), b_dec=torch.from_numpy(np.asarray(tensors["b_dec"])),
        architecture="topk", k=cfg["k"], apply_b_dec_to_input=True, normalize_activations="none",
        hook_name=cfg["hook_name"], hf_hook_name=cfg["hf_hook_name"], source=str(cfg_path),
        metadata={"format": "sparsify", "cfg": raw},
    )
    return sae


def load_gemma_scope(path: str | Path, hook_name: str | None = None) -> SparseAutoencoder:
    """Read a Gemma Scope ``params.npz`` or Gemma Scope 2 ``params.safetensors`` (JumpReLU SAE or transcoder) on the CPU.

    The hook is ``hook_name`` if given, else Gemma Scope 2's ``config.json`` (``hf_hook_point_in``, and
    ``hf_hook_point_out`` for a transcoder), else the repos' folder layout (``causal_kl.sae_format.gemma_scope_hooks``).
    A transcoder (SAELens' gemma_3 loader: ``jumprelu_transcoder``, or ``jumprelu_skip_transcoder`` with
    ``affine_connection``) has ``W_dec [d_sae, d_out]``, ``b_dec [d_out]`` and, when affine, the skip term
    ``affine_skip_connection [d_in, d_out]`` (``W_skip`` is its transpose).
    """
    p = Path(path)
    if not p.exists():
        raise CausalKLError(p, "sae path", "does not exist", f"point it at a Gemma Scope {GEMMA_SCOPE_NPZ} or {GEMMA_SCOPE_SAFETENSORS}")
    raw_cfg = gemma_scope_config(p)
    where = gemma_scope_hooks(raw_cfg, p)
    if p.suffix == ".npz":
        try:
            with np.load(p) as data:
                tensors = {k: np.asarray(data[k]) for k in data.files}
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise CausalKLError(p, None, f"not a readable npz file ({str(e).splitlines()[0]})", "download params.npz again") from e
    else:
        tensors = _read_safetensors(p)
    tensors = gemma_scope_names(tensors)
    arch = gemma_scope_architecture(where, tensors, p)
    check_required_tensors(tensors, "jumprelu", p, gemma_scope=True)
    return SparseAutoencoder(
        W_enc=torch.from_numpy(tensors["W_enc"]), b_enc=torch.from_numpy(tensors["b_enc"]),
        W_dec=torch.from_numpy(tensors["W_dec"]), b_dec=torch.from_numpy(tensors["b_dec"]),
        threshold=torch.from_numpy(tensors["threshold"]), architecture=arch,
        W_skip=torch.from_numpy(np.ascontiguousarray(tensors[GEMMA_SCOPE_SKIP].T)) if has_skip(arch) else None,
        apply_b_dec_to_input=False, normalize_activations="none",
        hook_name=hook_name if hook_name is not None else where.hook_name,
        hook_name_out=where.hook_name_out, hf_hook_name=None if hook_name is not None else where.hf_hook_name,
        hf_hook_name_out=where.hf_hook_name_out, source=str(p),
        metadata={"model_name": raw_cfg.get("model_name"), "cfg": raw_cfg},
    )


# ------------------------------------------------------------------------------- writing
def saelens_cfg(sae: SparseAutoencoder, model_name: str | None = None, extra_metadata: dict | None = None) -> dict[str, Any]:
    """The ``cfg.json`` SAELens >= 6 writes for this SAE (``SAEConfig.to_dict`` layout)."""
    metadata = {
        "sae_lens_version": SAELENS_LAYOUT_VERSION,
        "sae_lens_training_version": SAELENS_LAYOUT_VERSION,
        "model_name": model_name if model_name is not None else sae.metadata.get("model_name"),
        "hook_name": sae.hook_name,
        "hook_head_index": None,
        "prepend_bos": True,
        "written_by": "causal-kl",
    }
    metadata.update(extra_metadata or {})
    cfg: dict[str, Any] = {
        "architecture": sae.architecture,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": sae.apply_b_dec_to_input,
        "normalize_activations": sae.normalize_activations,
        "reshape_activations": "none",
        "metadata": metadata,
    }
    if sae.architecture == "topk":
        cfg["k"] = sae.k
        cfg["rescale_acts_by_decoder_norm"] = sae.rescale_acts_by_decoder_norm
    if sae.transcoder:  # SAELens' TranscoderConfig: d_out; hook_name_out in the metadata
        cfg["d_out"] = sae.d_out
        metadata["hook_name_out"] = sae.hook_name_out
    if sae.hook_z:
        cfg["reshape_activations"] = "hook_z"
    return cfg


def save_sae(sae: SparseAutoencoder, path: str | Path, model_name: str | None = None,
             extra_metadata: dict | None = None) -> Path:
    """Write ``sae`` as a SAELens directory (``cfg.json``, ``sae_weights.safetensors``, and
    ``activation_scaler.json`` for ``expected_average_only_in``) that ``SAE.load_from_disk`` reads.
    Each file is written atomically; returns the directory."""
    return write_saelens_dir(path, sae_tensors(sae), saelens_cfg(sae, model_name, extra_metadata),
                             scaling_factor=sae.norm_scaling_factor if sae.normalize_activations == "expected_average_only_in" else None)


def sae_tensors(sae: SparseAutoencoder) -> dict[str, np.ndarray]:
    """The SAE's tensors by SAELens' state-dict names, float32 numpy on the CPU."""
    return {n: getattr(sae, n).detach().cpu().to(torch.float32).contiguous().numpy() for n in required_tensors(sae.architecture)}


def write_saelens_dir(path: str | Path, tensors: dict[str, np.ndarray], cfg: dict[str, Any],
                      scaling_factor: float | None = None) -> Path:
    """Low-level writer: ``tensors`` to ``sae_weights.safetensors`` and ``cfg`` verbatim to ``cfg.json``
    (any SAELens version's spelling), plus ``activation_scaler.json`` when ``scaling_factor`` is given."""
    from safetensors.numpy import save_file

    d = Path(path)
    d.mkdir(parents=True, exist_ok=True)
    with atomic_path(d / SAELENS_WEIGHTS) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp))
    if scaling_factor is not None:
        with atomic_path(d / SAELENS_SCALER) as tmp:
            tmp.write_text(json.dumps({"scaling_factor": float(scaling_factor), "has_whitening": False}))
    with atomic_path(d / SAELENS_CFG) as tmp:
        tmp.write_text(json.dumps(cfg, indent=2) + "\n")
    return d
