"""Jobs of ``rules/report.smk``: the floor-check gate and the self-contained HTML report."""

from __future__ import annotations

import logging

from causal_kl.gate import floor_gate
from causal_kl.io import read_json, read_patch, write_json
from causal_kl.report import build_report

log = logging.getLogger(__name__)

def gate(geometry: list[str], floors: str, reextract: list[str], record: str, min_cos: float,
         gold_repatch_kl_max: float, expected_fve: dict, routes: list[str]) -> None:
    """The floor-check gate of the run (re-extract cos, gold-repatch KL, FVE re-check)."""
    record_ = floor_gate(read_json(reextract[0]) if reextract else None, read_patch(floors, None, offsets=[0]),
                         {r: read_json(p) for r, p in zip(routes, geometry)}, min_cos, gold_repatch_kl_max,
                         expected_fve)
    write_json(record, record_)
    log.info("gate: %s", record_["line"])


def report_html(run: str, gate: str, conditions: list[str], quartiles: list[str], offsets: list[str],
                token_classes: list[str], stats: list[str], fig1: list[str], fig2: list[str], fig3: list[str],
                routes_table: list[str], fig_routes: list[str], fig1_all: list[str], fig2_all: list[str],
                fig3_all: list[str], report: str, routes: list[str], reference: bool) -> None:
    """The run's report: one self-contained HTML file (figures embedded) built from the analysis outputs."""
    per_route = dict(conditions=conditions, quartiles=quartiles, offsets=offsets, token_classes=token_classes,
                     stats=stats, fig1=fig1, fig2=fig2, fig3=fig3)
    route_files = {r: {k: v[i] for k, v in per_route.items()} for i, r in enumerate(routes)}
    comparison = {key: files[0] for key, files in (("routes", routes_table), ("fig_routes", fig_routes),
                                                   ("fig1", fig1_all), ("fig2", fig2_all), ("fig3", fig3_all)) if files}
    build_report(run, gate, route_files, comparison, report, reference=reference)
