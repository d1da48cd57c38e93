"""Jobs of ``rules/tables.smk``: the per-site tables every analysis starts from, and the write-up's tables as CSV."""

from __future__ import annotations

import logging

import pandas as pd
import pyarrow as pa

from causal_kl import tables
from causal_kl.frontier import frontier_layers, frontier_table, loss_recovered_defined
from causal_kl.contracts import ERROR_NORMS, PER_SITE
from causal_kl.geometry import gold_variance
from causal_kl.hooks import parse_point
from causal_kl.io import provenance as provenance_record
from causal_kl.io import (read_choices, read_csv, read_geometry, read_gold, read_json, read_mean, read_patch,
                          read_parquet, read_per_site, read_sites, write_csv, write_parquet)
from causal_kl.per_site import error_norms as error_norms_of
from causal_kl.per_site import per_site_table
from causal_kl.reference import with_reference

log = logging.getLogger(__name__)

OFFSET_COLUMNS = ["site_id", "condition", "offset", "kl"]
"""What the offsets table (§5) reads of the patch rows."""
FRAME_COLUMNS = ["site_id", "condition", "offset", "kl", "delta_ce"]
"""What a table at one offset (``tables.offset_frame``) reads of the patch rows."""


def _published(reference: list[str]) -> pd.DataFrame | None:
    """The published table a rule was given as input (none unless the run shows the reference)."""
    return read_csv(reference[0]) if reference else None


def error_norms(gold: str, choices: str, mean: str, norms: str, layer: str, provenance: dict) -> None:
    """Route-independent error norms per site (resamples, zero, mean)."""
    site_ids, golds = read_gold(gold)
    mean_gold = read_mean(mean, golds.shape[1])
    df = error_norms_of(site_ids, golds, read_choices(choices), mean_gold, choices)
    write_parquet(norms, pa.Table.from_pandas(df, preserve_index=False), ERROR_NORMS, meta=provenance_record(**provenance))
    log.info("error norms for %d sites", len(df))


def per_site(floors: str, patch: str, geometry: str, error_norms: str, sites: str, table: str, layer: str, route: str,
             provenance: dict) -> None:
    """The route's per-site table (offset 0 of every condition, geometry, error norms, token)."""
    rows = read_patch([floors, patch], route, offsets=[0], columns=["site_id", "condition", "offset", "kl", "ce", "delta_ce"])
    df = per_site_table(rows, read_geometry(geometry), read_parquet(error_norms, ERROR_NORMS).to_pandas(),
                         read_sites(sites).to_pandas())
    write_parquet(table, pa.Table.from_pandas(df, preserve_index=False), PER_SITE,
                  meta=provenance_record(**provenance, route=route))
    log.info("route %s: %d sites", route, len(df))


def table_conditions(per_site: str, reference: list[str], table: str, n_boot: int, seed: int, ci: float,
                     layer: str, route: str) -> None:
    """§2: the conditions table of one route."""
    df = tables.conditions_table(read_per_site(per_site, tables.CONDITIONS_COLUMNS), n_boot=n_boot, seed=seed, ci=ci)
    write_csv(table, with_reference(df, _published(reference), "condition"))


def table_quartiles(per_site: str, geometry_json: str, gold: str, reference: list[str], table: str, n_boot: int,
                    seed: int, ci: float, layer: str, route: str) -> None:
    """§4: the quartiles of geometric error of one route."""
    var = read_json(geometry_json).get("variance")
    if var is None:
        var = gold_variance(read_gold(gold)[1])
        log.info("geometry JSON states no Var; recomputed %.6g from %s", var, gold)
    df = tables.quartile_table(read_per_site(per_site, tables.QUARTILE_COLUMNS), var, n_boot=n_boot, seed=seed, ci=ci)
    write_csv(table, with_reference(df, _published(reference), "quartile"))


def table_offsets(floors: str, patch: str, reference: list[str], table: str, layer: str, route: str) -> None:
    """§5: median KL per condition at every offset, for one route."""
    df = tables.offsets_table(read_patch([floors, patch], route, columns=OFFSET_COLUMNS))
    write_csv(table, with_reference(df, _published(reference), "offset"))


def table_token_classes(per_site: str, geometry_json: str, reference: list[str], table: str, classes: dict,
                        layer: str, route: str) -> None:
    """Median KL@0 of the route conditions by token class (digits and the configured classes)."""
    df = tables.token_class_table(read_per_site(per_site, tables.TOKEN_CLASS_COLUMNS), classes, read_json(geometry_json).get("variance"))
    write_csv(table, with_reference(df, _published(reference), "group"))


def table_routes(conditions: list[str], geometry: list[str], whole_context: list[str], sae: list[str], table: str,
                 routes: list[str], layer: str) -> None:
    """All routes of a layer side by side: loss recovered and median KL@0 with CIs, FVE, SAELens' whole-context
    kl_div_score / ce_loss_score (labelled as SAELens' definitions), and L0 / dead latents of SAE routes."""
    conds = {r: read_csv(p) for r, p in zip(routes, conditions)}
    fve = {r: read_json(p).get("fve") for r, p in zip(routes, geometry)}
    scores = {read_json(p)["route"]: read_json(p) for p in whole_context}
    sparsity = {read_json(p)["route"]: read_json(p) for p in sae}
    write_csv(table, tables.with_saelens_columns(tables.routes_table(conds, fve), scores, sparsity))


def table_span_conditions(floors: str, patch: str, table: str, n_boot: int, seed: int, ci: float, layer: str,
                          route: str, span: str) -> None:
    """§2 for a span of k positions: every condition at the first token after the span (offset 0)."""
    rows = read_patch([floors, patch], route, offsets=[0], columns=FRAME_COLUMNS)
    df = tables.span_conditions_table(rows, n_boot=n_boot, seed=seed, ci=ci)
    write_csv(table, df)


def table_span_offsets(floors: str, patch: str, table: str, layer: str, route: str, span: str) -> None:
    """§5 for a span of k positions: median KL per condition at every offset from the span's last position
    (negative: inside the span)."""
    write_csv(table, tables.offsets_table(read_patch([floors, patch], route, columns=OFFSET_COLUMNS)))


def table_spans(floors: list[str], patches: list[str], summaries: list[str], table: str, spans: list[int],
                offsets: list[int], n_boot: int, seed: int, ci: float, layer: str, route: str) -> None:
    """Every span length side by side: median KL at offsets after the span and loss recovered, with CIs, and how
    many sites each span excluded (its span ran past the document's end)."""
    wanted = sorted({0, *(int(o) for o in offsets)})
    frames = {int(k): read_patch([f, p], route, offsets=wanted, columns=FRAME_COLUMNS)
              for k, f, p in zip(spans, floors, patches)}
    df = tables.spans_table(frames, offsets=tuple(offsets), n_boot=n_boot, seed=seed, ci=ci)
    excluded = {int(read_json(s)["span"]): int(read_json(s)["n_excluded"]) for s in summaries}
    df.insert(3, "n_excluded", df["span"].map(lambda k: excluded.get(int(k), 0)).astype(int))
    write_csv(table, df)


def table_layers(conditions: list[str], geometry: list[str], table: str, pairs: list[list]) -> None:
    """Every layer of a sweep: per route and floor, median KL@0 and loss recovered (with CIs), and FVE."""
    conds = {(int(l), r): read_csv(p) for (l, r), p in zip(pairs, conditions)}
    fve = {(int(l), r): read_json(p).get("fve") for (l, r), p in zip(pairs, geometry)}
    write_csv(table, tables.layers_table(conds, fve))



def table_frontier(routes_table: str, conditions: list[str], table: str, kinds: dict, layer: str) -> None:
    """The sparsity–damage frontier of a layer: per route L0, FVE, median KL@0 and loss recovered (with CIs), SAELens'
    kl_div_score, and the (sparsity, damage) pairs whose frontier it is on (:mod:`causal_kl.frontier`).

    ``conditions``: the layer's routes' conditions tables; the first says whether loss recovered is a score here (the
    floors, and so that answer, do not depend on the route)."""
    defined = loss_recovered_defined(read_csv(conditions[0])) if conditions else False
    df = frontier_table(read_csv(routes_table), defined, parse_point(layer).layer, kinds)  # (its point: the folder)
    write_csv(table, df)
    log.info("layer %s: %d routes; on the L0-KL@0 frontier: %s; on the FVE-KL@0 frontier: %s", layer, len(df),
             ", ".join(df.loc[df.frontier_l0_kl0, "route"]) or "none",
             ", ".join(df.loc[df.frontier_fve_kl0, "route"]) or "none")


def table_frontier_layers(frontiers: list[str], table: str, layers: list[int]) -> None:
    """Every layer's frontier table in one (each frontier is of its own layer: damage is not compared across layers)."""
    write_csv(table, frontier_layers({int(l): read_csv(p) for l, p in zip(layers, frontiers)}))
