"""The floor-check gate of a run: the write-up's three checks, with their measured values.

- ``reextract``: min cos(stored gold, re-extracted gold) > ``gold.min_cos``;
- ``gold_repatch``: median KL@0 of the ``gold`` condition <= ``patch.gold_repatch_kl_max``;
- ``fve_recheck``: per route, the recomputed FVE within ``fve_tolerance`` of ``expected_fve``.

Each check is ✓ (passed), ✗ (failed) or – (does not apply / did not run). The report shows the
gate at the top, red when any check that ran failed.
"""

from __future__ import annotations

from typing import Any, Mapping

import pandas as pd

from causal_kl.conditions import GOLD
from causal_kl.geometry import fve_recheck

PASS, FAIL, NOT_RUN = "✓", "✗", "–"


def _check(name: str, label: str, value: Any, bound: Any, ok: bool | None, detail: str,
           route: str | None = None) -> dict[str, Any]:
    """One gate row; ``ok`` None means the check did not run."""
    status = NOT_RUN if ok is None else (PASS if ok else FAIL)
    row = {"name": name, "label": label, "value": value, "bound": bound, "status": status, "pass": ok, "detail": detail}
    if route is not None:
        row["route"] = route
    return row


def floor_gate(reextract: Mapping[str, Any] | None, patch: pd.DataFrame | None, geometry: Mapping[str, Mapping[str, Any]],
               min_cos: float, gold_repatch_kl_max: float, routes: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The gate record of a run.

    ``reextract``: the re-extract summary (``reextract.json``), or None when the run's golds are the
    ones it extracted (nothing stored to re-extract: the check does not apply);
    ``patch``: PATCH rows at offset 0 (None when the patch engine did not run); ``geometry``:
    route -> its geometry summary (``geometry/{route}.json``); ``routes``: route -> its config
    entry (``expected_fve``, ``fve_tolerance``). Returns ``{"checks": [{"name", "label", "value",
    "bound", "status", "pass", "detail"[, "route"]}, ...], "pass": bool, "line": "re-extract
    cos>0.999 ✓ · gold repatch KL 0.0004 ✓ · FVE 0.7749 ✓"}``; ``pass`` is False when any
    check that ran failed.
    """
    checks: list[dict[str, Any]] = []

    label = f"re-extract cos>{min_cos:g}"
    if reextract is None:
        checks.append(_check("reextract", label, None, min_cos, None,
                             "the run extracted its own golds: no stored golds to re-extract"))
    elif reextract.get("min_cos") is None:
        checks.append(_check("reextract", label, None, min_cos, False, "the re-extract summary has no min_cos"))
    else:
        value = reextract["min_cos"]
        checks.append(_check("reextract", label, float(value), min_cos, float(value) > min_cos,
                             f"min cos {float(value):.6f}"))

    if patch is None:
        checks.append(_check("gold_repatch", "gold repatch KL", None, gold_repatch_kl_max, None, "patch engine not run"))
    else:
        sel = patch[(patch["condition"] == GOLD) & (patch["offset"] == 0)]
        if sel.empty:
            checks.append(_check("gold_repatch", "gold repatch KL", None, gold_repatch_kl_max, False,
                                 "no gold rows at offset 0 in the patch table"))
        else:
            med = float(sel["kl"].median())
            checks.append(_check("gold_repatch", f"gold repatch KL {med:.2g}", med, gold_repatch_kl_max,
                                 med <= gold_repatch_kl_max,
                                 f"median KL@0 {med:.3g} nats (bound {gold_repatch_kl_max:g}, n={len(sel)})"))

    for route, summary in geometry.items():
        check = fve_recheck(float(summary["fve"]), routes.get(route, {}))
        label = f"FVE {summary['fve']:.4f}" if len(geometry) == 1 else f"FVE {route} {summary['fve']:.4f}"
        if check is None:
            checks.append(_check("fve_recheck", label, summary["fve"], None, None, "no expected FVE stated", route=route))
        else:
            checks.append(_check("fve_recheck", label, summary["fve"], [check["expected"], check["tolerance"]],
                                 check["pass"], f"expected {check['expected']:.4f} ± {check['tolerance']:g}, "
                                 f"difference {check['difference']:+.4f}", route=route))
    overall = all(c["pass"] is not False for c in checks)
    line = " · ".join(f"{c['label']} {c['status']}" for c in checks)
    return {"checks": checks, "pass": overall, "line": line}
