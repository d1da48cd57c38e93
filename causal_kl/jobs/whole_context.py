"""Jobs of ``rules/whole_context.smk``: SAELens-comparable whole-context scores of a route at a layer."""

from __future__ import annotations

import logging

from causal_kl.hooks import parse_point
from causal_kl.io import read_docs, write_json
from causal_kl.jobs.gold import load_run_model

log = logging.getLogger(__name__)

DEFINITIONS = {
    "kl_div_score": "(KL_zero - KL_route) / KL_zero  (sae_lens/evals.py get_downstream_reconstruction_metrics)",
    "ce_loss_score": "(CE_zero - CE_route) / (CE_zero - CE_clean)  (sae_lens/evals.py)",
    "splice": "the reconstruction at every non-special position of each context at once (SAELens' whole-context splice)",
}
"""What the scores mean, written beside them."""


def whole_context(docs: str, train_gold: list[str], sae: list[str], vectors: list[str], explanations: list[str],
                  checkpoint: list[str], model_dir: list[str], scores: str, route_entry: dict, fingerprints: dict,
                  settings: dict, seed: int, model: dict, model_fingerprint: str | None, dtype: str, device: str,
                  layer: str, route: str, provenance: dict) -> None:
    """``kl_div_score`` and ``ce_loss_score`` of one route at one layer, on contexts drawn from the run's documents."""
    import torch

    from causal_kl.routes.reconstructors import build_reconstructor
    from causal_kl.whole_context import draw_contexts, special_token_ids, whole_context_scores

    point = parse_point(layer)
    layer_i = point.layer
    record = {"route": route, "layer": layer_i, "hook": point.hook, "point": point.name, "kind": route_entry["kind"],
              "definitions": DEFINITIONS, "provenance": provenance}
    loaded = load_run_model(model, dtype, device, with_tokenizer=True, layer=point)
    doc_tokens = read_docs(docs)
    hook_in = route_entry.get("hook_in")  # a transcoder reads another hook of the block than the one it writes
    rebuilt = build_reconstructor({**route_entry, "hook": point.hook}, layer_i, route=route,
                                  d_model=loaded.hook_width(hook_in or point.hook),
                                  train_gold=train_gold[0] if train_gold else None, eval_doc_ids=set(doc_tokens),
                                  loaded=loaded, dtype=dtype, device=device)
    reason = rebuilt.reason
    if reason is None and rebuilt.needs_where:
        # (even a file of every position cannot serve: SAELens packs documents into contexts, so a context's states
        # have other prefixes than the document positions a file's vectors reconstruct)
        reason = ("the whole-context splice needs a reconstruction of every state of SAELens-packed contexts; this "
                  "route's file holds vectors only for the document positions it lists")
    if reason is not None:
        log.info("route %s, layer %d: no whole-context scores: %s", route, layer_i, reason)
        write_json(scores, {**record, "skipped": reason})
        return
    n_ctx, n_contexts = int(settings["n_ctx"]), int(settings["n_contexts"])
    contexts = draw_contexts(list(doc_tokens.values()), n_ctx, n_contexts, seed, loaded.tokenizer.bos_token_id)
    if not contexts:
        reason = (f"the run's {len(doc_tokens)} documents give no context of whole_context.n_ctx = {n_ctx} tokens "
                  "(too few tokens)")
        log.warning("route %s, layer %d: no whole-context scores: %s (lower whole_context.n_ctx, or widen corpus.rows)",
                    route, layer_i, reason)
        write_json(scores, {**record, "skipped": reason, "n_contexts_requested": n_contexts})
        return
    if len(contexts) < n_contexts:
        record["note"] = (f"scored on the {len(contexts)} contexts of {n_ctx} tokens the run's {len(doc_tokens)} "
                          f"documents give, not the {n_contexts} of whole_context.n_contexts (each once; SAELens would "
                          "start its dataset over and score some twice)")
        log.warning("route %s, layer %d: %s; widen corpus.rows for more, or set whole_context.n_contexts to %d",
                    route, layer_i, record["note"], len(contexts))

    def reconstruct(hidden: torch.Tensor) -> torch.Tensor:  # [n, width] float32 on the model's device (the hook's)
        return torch.from_numpy(rebuilt(hidden.detach().cpu().numpy())).to(hidden.device)

    result = whole_context_scores(loaded, contexts, layer_i, reconstruct, special_token_ids(loaded.tokenizer),
                                  int(settings["batch_size"]), hook=point.hook, hook_in=hook_in)
    log.info("route %s, layer %d (SAELens' definitions): kl_div_score %.4f, ce_loss_score %.4f on %d contexts of %d",
             route, layer_i, result["kl_div_score"], result["ce_loss_score"], result["n_contexts"], n_ctx)
    write_json(scores, {**record, **result, "n_contexts_requested": n_contexts, "seed": seed})
