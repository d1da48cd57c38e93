"""Reconstruction routes: one module per kind, and the registry that maps a kind to its steps.

A route turns the eval golds into ``RECON`` (``site_id``, ``reconstruction`` float32[d] at the
norm the route produced it). Adding a route is one config entry; a new kind is one module with a
``run(job)`` and one rule in ``rules/recon.smk``.

| kind | steps | reads |
|---|---|---|
| ``file`` | recon | an external parquet / npy + site ids / safetensors |
| ``pca`` | recon | training golds (``train_rows``) |
| ``text_channel`` | recon (+ explanations) | training golds, the model (logit lens) |
| ``nla_ar`` | recon | an explanations parquet, the AR checkpoint |
| ``nla_av`` | explain, then ``nla_ar``'s recon | golds, the AV and AR checkpoints |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from causal_kl.routes import file, nla_ar, nla_av, pca, text_channel
from causal_kl.routes.base import RouteJob


@dataclass(frozen=True)
class RouteKind:
    reconstruct: Callable[[RouteJob], None]
    explain: Callable[[RouteJob], None] | None = None  # writes job.explanations before reconstruct reads them
    trains: bool = False  # reads training golds (train_rows)


ROUTE_KINDS: dict[str, RouteKind] = {
    "file": RouteKind(file.run),
    "pca": RouteKind(pca.run, trains=True),
    "text_channel": RouteKind(text_channel.run, trains=True),
    "nla_ar": RouteKind(nla_ar.run),
    "nla_av": RouteKind(nla_ar.run, explain=nla_av.run),
}


def route_kind(kind: str) -> RouteKind:
    if kind not in ROUTE_KINDS:
        from causal_kl.errors import CausalKLError

        raise CausalKLError("config", "routes.*.kind", f"unknown route kind '{kind}'", f"use one of {sorted(ROUTE_KINDS)}")
    return ROUTE_KINDS[kind]




def reconstruct_job(smk) -> None:
    """Rules ``recon_<kind>``: the route kind's reconstruct step on a Snakemake job."""
    job = RouteJob.from_snakemake(smk)
    route_kind(job.kind).reconstruct(job)


def explain_job(smk) -> None:
    """Rule ``explain_nla_av``: the route kind's explain step on a Snakemake job."""
    job = RouteJob.from_snakemake(smk)
    route_kind(job.kind).explain(job)


__all__ = ["ROUTE_KINDS", "RouteJob", "RouteKind", "explain_job", "reconstruct_job", "route_kind"]
