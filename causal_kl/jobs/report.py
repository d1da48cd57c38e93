"""Jobs of ``rules/report.smk``: the floor-check gate and the self-contained HTML report."""

from __future__ import annotations

import logging

from causal_kl.gate import floor_gate
from causal_kl.io import read_json, read_patch, write_json
from causal_kl.report import build_report

log = logging.getLogger(__name__)

def gate(geometry: list[str], floors: str, reextract: list[str], record: str, min_cos: float,
         gold_repatch_kl_max: float, expected_fve: dict, routes: list[str], layer: str) -> None:
    """The floor-check gate of the run (re-extract cos, gold-repatch KL, FVE re-check)."""
    record_ = floor_gate(read_json(reextract[0]) if reextract else None, read_patch(floors, None, offsets=[0], columns=["condition", "offset", "kl"]),
                         {r: read_json(p) for r, p in zip(routes, geometry)}, min_cos, gold_repatch_kl_max,
                         expected_fve)
    write_json(record, record_)
    log.info("gate: %s", record_["line"])


def report_html(run: str, files: list[str], report: str, manifest: dict, reference: bool) -> None:
    """The run's report: one self-contained HTML file (figures embedded) built from the analysis outputs of every
    layer, the ``manifest`` naming which file is what."""
    build_report(run, manifest, report, reference=reference)
