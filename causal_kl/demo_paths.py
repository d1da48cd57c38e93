"""Where the demo writes what it builds: its corpus, model and SAE suite, the only paths outside ``results/`` and
``logs/`` that a rule of this workflow writes.

Read by ``rules/demo.smk`` (its outputs), ``rules/common.smk`` (which inputs the run's own rules make) and
``causal_kl.checks`` (the demo's config names these paths); torch-free, config-only.
"""

from __future__ import annotations

import os

DEMO_PATHS = {"corpus": "resources/demo/corpus.parquet", "model": "resources/demo/model"}
"""Where the demo builds its corpus and model: with its SAEs, the only places a rule may write outside results/ and logs/."""
DEMO_SAE_DIR = "resources/demo/sae"
"""Where the demo writes its SAEs: one folder per sparsity and layer, ``k{k}/L{layer}``, and per kind of its SAEs
inside a block, ``{kind}/L{layer}``."""
DEMO_SUBLAYER_KINDS = ("mlp_out", "attn_z", "skip_transcoder")
"""The demo's SAEs inside a block: a TopK SAE at hook_mlp_out, one at attn.hook_z, a skip transcoder mlp_in -> mlp_out."""


def demo_sublayer_saes(config: dict) -> list[tuple[str, int]]:
    """``(kind, layer)`` of each SAE the demo trains inside a block (``demo.sae.sublayer``: its layer and kinds)."""
    sub = ((config.get("demo") or {}).get("sae") or {}).get("sublayer") or {}
    if sub.get("layer") is None:
        return []
    return [(kind, int(sub["layer"])) for kind in sub.get("kinds", DEMO_SUBLAYER_KINDS)]


def demo_sae_ks(config: dict) -> list[int]:
    """The sparsities (active latents k) of the demo's SAE suite: ``demo.sae.k``, one value or a list."""
    k = ((config.get("demo") or {}).get("sae") or {}).get("k", 16)
    return sorted({int(x) for x in (k if isinstance(k, list) else [k])})


def demo_sae_dir(k: int | str, layer: int | str, prefix: str = "k") -> str:
    """The folder of the demo's SAE with ``k`` active latents at ``layer`` (SAELens' format); with ``prefix=""``, of
    its SAE of kind ``k`` inside block ``layer`` (``mlp_out/L3``)."""
    return f"{DEMO_SAE_DIR}/{prefix}{k}/L{layer}"


def made_by_workflow(config: dict) -> set[str]:
    """The files and folders outside ``results/`` that the run's own rules make (normalised paths): the demo's
    corpus, model and SAE suite (one folder per sparsity and layer); none for any other run.

    Those are Snakemake inputs of the rules that read them; every other file a rule reads is fingerprinted
    (``io.content_fingerprint``), in every config, so that replacing it behind the same path reruns what read it.
    """
    if not config.get("demo"):
        return set()
    from causal_kl.config import run_layers

    saes = [demo_sae_dir(k, one) for k in demo_sae_ks(config) for one in run_layers(config)]
    saes += [demo_sae_dir(kind, one, prefix="") for kind, one in demo_sublayer_saes(config)]
    return {os.path.normpath(p) for p in (*DEMO_PATHS.values(), *saes)}
