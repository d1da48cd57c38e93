"""Hook sites: where in the model a route's vector is read and spliced, named as SAELens names them.

A **point** is a (layer, hook) pair. The hook is one of ``HOOKS``:

| hook | inside block L | SAELens / TransformerLens names |
|---|---|---|
| ``resid_post`` | block L's output (the design's layer L) | ``blocks.L.hook_resid_post``; ``blocks.{L+1}.hook_resid_pre`` |
| ``resid_mid`` | the residual between attention and MLP | ``blocks.L.hook_resid_mid`` |
| ``attn_z`` | the attention heads' outputs, concatenated (the output projection's input; width heads x head_dim) | ``blocks.L.attn.hook_z`` |
| ``attn_out`` | the attention's contribution to the residual (after Gemma's post-attention norm) | ``blocks.L.hook_attn_out`` |
| ``mlp_in`` | the MLP's input, normalised (the pre-MLP norm's output) | ``blocks.L.hook_mlp_in`` (as SAELens' Gemma Scope 2 loader maps it), ``blocks.L.ln2.hook_normalized``, ``blocks.L.mlp.hook_in`` |
| ``mlp_out`` | the MLP's contribution to the residual (after Gemma's post-feedforward norm) | ``blocks.L.hook_mlp_out`` |

Each family (``causal_kl.families``) says which module of a block holds each hook, as the module's
forward input or output (``HookModule``); ``resid_post`` is the block itself. A hook other than
``resid_post`` changes block L's output only at the positions it is spliced at (everything from the
attention's output on is position-wise, and block L's attention reads its keys and values from the
block's input), which is what makes the fast path exact there (``causal_kl.patching``).

Paths: a point's outputs live under ``L{layer}`` for ``resid_post`` (so a residual-stream run keeps its
paths) and ``L{layer}.{hook}`` otherwise (``L12.mlp_out``); ``point_name``/``parse_point`` convert.

Torch-free: parse-time checks read it.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

RESID_POST = "resid_post"
HOOKS = ("resid_post", "resid_mid", "attn_z", "attn_out", "mlp_in", "mlp_out")
"""Every hook site inside a block, in the order the block computes them (resid_post last in the block, first here)."""

SUBLAYER_HOOKS = HOOKS[1:]
"""The hooks inside a block (not its output)."""

DESCRIPTIONS = {
    "resid_post": "the block's output (the residual stream)",
    "resid_mid": "the residual stream between the attention and the MLP",
    "attn_z": "the attention heads' outputs, concatenated (the output projection's input)",
    "attn_out": "the attention's output added to the residual stream",
    "mlp_in": "the MLP's normalised input",
    "mlp_out": "the MLP's output added to the residual stream",
}

# SAELens / TransformerLens hook names inside ``blocks.L.`` -> our hook
_TL_NAMES = {
    "hook_resid_post": "resid_post",
    "hook_resid_mid": "resid_mid",
    "attn.hook_z": "attn_z",
    "hook_z": "attn_z",
    "hook_attn_out": "attn_out",
    "hook_mlp_in": "mlp_in",
    "ln2.hook_normalized": "mlp_in",
    "mlp.hook_in": "mlp_in",
    "hook_mlp_out": "mlp_out",
}
TL_NAME = {"resid_post": "hook_resid_post", "resid_mid": "hook_resid_mid", "attn_z": "attn.hook_z",
           "attn_out": "hook_attn_out", "mlp_in": "hook_mlp_in", "mlp_out": "hook_mlp_out"}
"""Our hook -> the name SAELens gives it inside ``blocks.L.``."""


@dataclass(frozen=True)
class HookModule:
    """Where a family keeps a hook: a module inside the block (dotted path) and which side of its forward."""

    module: str  # dotted path from the block, e.g. "self_attn.o_proj"
    side: str  # "in": the module's first input; "out": its output (first element of a tuple)


@dataclass(frozen=True)
class Point:
    """A (layer, hook) pair: where a vector is read and spliced."""

    layer: int
    hook: str = RESID_POST

    @property
    def name(self) -> str:
        return point_name(self.layer, self.hook)

    @property
    def sublayer(self) -> bool:
        return self.hook != RESID_POST

    def saelens_name(self) -> str:
        return f"blocks.{self.layer}.{TL_NAME[self.hook]}"


def point_name(layer: int, hook: str = RESID_POST) -> str:
    """The path component of a point without its ``L``: ``"12"`` (resid_post) or ``"12.mlp_out"``."""
    if hook not in HOOKS:
        raise ValueError(f"unknown hook {hook!r} (hooks: {', '.join(HOOKS)})")
    return str(int(layer)) if hook == RESID_POST else f"{int(layer)}.{hook}"


_POINT = re.compile(r"^(\d+)(?:\.([a-z_]+))?$")


def parse_point(name: "Point | str | int") -> Point:
    """``"12"`` / ``12`` -> Point(12, resid_post); ``"12.mlp_out"`` -> Point(12, mlp_out); a Point as it is."""
    if isinstance(name, Point):
        return name
    m = _POINT.match(str(name))
    if not m or (m.group(2) is not None and m.group(2) not in SUBLAYER_HOOKS):
        raise ValueError(f"not a point name: {name!r} (a layer, or layer.hook with hook one of {', '.join(SUBLAYER_HOOKS)})")
    return Point(int(m.group(1)), m.group(2) or RESID_POST)


# TransformerLens / SAELens: blocks.L.<name>
_TL_HOOK = re.compile(r"^blocks\.(\d+)\.(.+)$")


@functools.cache
def _hf_hook_re() -> re.Pattern:
    """transformers module paths: ``<block L's path in any family>.<module>[.input|.output]``
    (``families.BLOCK_PATH``; read on first use: ``causal_kl.families`` imports this module)."""
    from causal_kl.families import BLOCK_PATH

    return re.compile(rf"^{BLOCK_PATH}\.(.+?)(?:\.(input|output))?$")


def tl_hook(hook_name: str) -> Point | None:
    """A SAELens/TransformerLens hook name inside a block -> its point (``blocks.L.hook_resid_pre`` -> (L-1, resid_post);
    ``blocks.0.hook_resid_pre`` and names we do not know -> None)."""
    m = _TL_HOOK.match(hook_name.strip())
    if not m:
        return None
    block, rest = int(m.group(1)), m.group(2)
    if rest == "hook_resid_pre":
        return Point(block - 1) if block > 0 else None
    hook = _TL_NAMES.get(rest)
    return Point(block, hook) if hook else None


FEEDS_MLP = ("pre_feedforward_layernorm", "post_attention_layernorm", "ln_2")
"""Norms whose output is the MLP's input in some family (Gemma's pre-feedforward norm; Llama's and GPT-NeoX's
post-attention norm; GPT-2's ``ln_2``): ``<norm>.output`` is read as ``mlp.input`` where the family's own table
has no hook at ``<norm>.output`` (Gemma Scope 2's transcoders read ``pre_feedforward_layernorm.output``)."""


def is_module_path(name: str) -> bool:
    """Whether a hook name is a transformers module path inside a block (``model.layers.L.<module>[.input|.output]``)."""
    return bool(_hf_hook_re().match(name.strip()))


def hf_hook(hf_name: str, family_hooks: dict[str, HookModule]) -> Point | None:
    """A transformers module path (``model.layers.L.post_feedforward_layernorm.output``, SAELens' ``hf_hook_name``)
    -> its point, read against one family's table (``families.Family.hooks``; ``<norm>.output`` of a norm of
    ``FEEDS_MLP`` is ``mlp.input`` where the table has nothing there); None when no hook of the family is there."""
    m = _hf_hook_re().match(hf_name.strip())
    if not m:
        return None
    block, module, side = int(m.group(1)), m.group(2), m.group(3) or "output"
    want = "in" if side == "input" else "out"
    for hook, where in family_hooks.items():
        if module in where.module.split("|") and where.side == want:  # "a|b": alternatives (families.resolve)
            return Point(block, hook)
    if module in FEEDS_MLP and want == "out":
        return hf_hook(f"layers.{block}.mlp.input", family_hooks)
    return None
