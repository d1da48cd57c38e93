"""Jobs of ``rules/report.smk``: the floor-check gate, the report's main page and its route pages."""

from __future__ import annotations

import logging

from causal_kl.gate import floor_gate
from causal_kl.io import read_json, read_patch, write_json
from causal_kl.report import build_report, build_route_page

log = logging.getLogger(__name__)

def gate(geometry: list[str], floors: str, reextract: list[str], record: str, min_cos: float,
         gold_repatch_kl_max: float, expected_fve: dict, routes: list[str], layer: str) -> None:
    """The floor-check gate of the run (re-extract cos, gold-repatch KL, FVE re-check)."""
    record_ = floor_gate(read_json(reextract[0]) if reextract else None, read_patch(floors, None, offsets=[0], columns=["condition", "offset", "kl"]),
                         {r: read_json(p) for r, p in zip(routes, geometry)}, min_cos, gold_repatch_kl_max,
                         expected_fve)
    write_json(record, record_)
    log.info("gate: %s", record_["line"])


def report_html(run: str, files: list[str], pages: list[str], report: str, manifest: dict, reference: bool) -> None:
    """The run's main page: the gate and provenance, the cross-layer comparison and frontier, and per layer the routes
    table, comparison figures and frontier, each route linked to its own page (``pages``, built first so that no link
    dangles; the main page does not read them)."""
    build_report(run, manifest, report, reference=reference)


def report_route(files: list[str], page: str, manifest: dict, main: str, run_name: str, route_config: dict,
                 reference: bool, layer: str, route: str) -> None:
    """One route's page at one layer: its tables, statistics, figures, SAELens' scores and spans (self-contained),
    linked back to the main page's layer section."""
    build_route_page(manifest, page, run_name, layer, route, main, route_config, reference=reference)
