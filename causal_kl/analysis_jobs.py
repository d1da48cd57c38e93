"""One function per analysis/report rule: read the rule's input files, compute, write its output.

The workflow scripts call exactly one of these with ``snakemake.input``/``params``/``output``;
the computations themselves are in :mod:`causal_kl.stats`, :mod:`causal_kl.tables`,
:mod:`causal_kl.figures` and :mod:`causal_kl.report`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import pyarrow as pa

from causal_kl import figures, tables
from causal_kl.analysis import (
    error_norms, geometry_fve, geometry_variance, per_site_table, read_geometry, read_json, read_patch,
    read_sites,
)
from causal_kl.io import provenance, write_json, write_parquet, write_text

log = logging.getLogger(__name__)


def _write_csv(df: pd.DataFrame, path: str | Path) -> None:
    write_text(path, df.to_csv(index=False, float_format="%.6g"))


def read_csv(path: str | Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=True)


def _reference(show: bool, name: str, directory: str | Path | None = None) -> Any:
    if not show:
        return None
    return tables.load_reference(directory or tables.REFERENCE_DIR).get(name)


# ---------------------------------------------------------------- data preparation

def job_error_norms(gold: str, choices: str, mean: str, out: str) -> None:
    """Route-independent error norms (resamples, zero, mean) per site."""
    df = error_norms(gold, choices, mean)
    write_parquet(out, pa.Table.from_pandas(df, preserve_index=False), meta=provenance(what="error_norms"))
    log.info("error norms for %d sites", len(df))


def job_per_site(patch: str, geometry: str, error_norms_path: str, sites: str, route: str, out: str) -> None:
    """The route's per-site table (offset 0 of every condition, geometry, error norms)."""
    p = read_patch(patch, route, offsets=[0])
    df = per_site_table(p, route, read_geometry(geometry), pd.read_parquet(error_norms_path), read_sites(sites))
    write_parquet(out, pa.Table.from_pandas(df, preserve_index=False), meta=provenance(what="per_site", route=route))
    log.info("route %s: %d sites", route, len(df))


# ---------------------------------------------------------------- tables

def job_conditions(per_site: str, out: str, n_boot: int, seed: int, ci: float, reference: bool) -> None:
    df = tables.conditions_table(pd.read_parquet(per_site), n_boot=n_boot, seed=seed, ci=ci)
    _write_csv(tables.with_reference(df, _reference(reference, "conditions"), "condition"), out)


def job_quartiles(per_site: str, geometry_json: str, gold: str, out: str, n_boot: int, seed: int, ci: float,
                  reference: bool) -> None:
    var = geometry_variance(read_json(geometry_json))
    if var is None:
        from causal_kl.analysis import read_gold
        from causal_kl.geometry import gold_variance

        var = gold_variance(read_gold(gold)[1])
        log.info("geometry JSON states no Var; recomputed %.6g from %s", var, gold)
    df = tables.quartile_table(pd.read_parquet(per_site), var, n_boot=n_boot, seed=seed, ci=ci)
    _write_csv(tables.with_reference(df, _reference(reference, "quartiles"), "quartile"), out)


def job_offsets(patch: str, route: str, out: str, reference: bool) -> None:
    df = tables.offsets_table(read_patch(patch, route))
    _write_csv(tables.with_reference(df, _reference(reference, "offsets"), "offset"), out)


def job_token_classes(per_site: str, model_path: str, classes: Mapping[str, str], out: str, reference: bool,
                      geometry_json: str | None = None) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    var = geometry_variance(read_json(geometry_json))
    df = tables.token_class_table(pd.read_parquet(per_site), lambda t: tok.decode([t]), classes, var)
    _write_csv(tables.with_reference(df, _reference(reference, "token_classes"), "group"), out)


def job_routes(conditions: Mapping[str, str], geometry_jsons: Mapping[str, str], out: str) -> None:
    conds = {r: read_csv(p) for r, p in conditions.items()}
    fve = {r: geometry_fve(read_json(p)) for r, p in geometry_jsons.items()}
    _write_csv(tables.routes_table(conds, fve), out)


# ---------------------------------------------------------------- statistics

def job_stat(kind: str, out: str, per_site: str | None = None, offsets: str | None = None, **kw: Any) -> None:
    """One statistic record: ``correlation``, ``paired``, ``energy`` or ``floor_offsets``."""
    if kind == "correlation":
        rec = tables.correlation_stats(pd.read_parquet(per_site))
    elif kind == "paired":
        rec = tables.paired_stats(pd.read_parquet(per_site), **kw)
    elif kind == "energy":
        rec = tables.energy_stats(pd.read_parquet(per_site), **kw)
    elif kind == "floor_offsets":
        rec = tables.floor_offsets(read_csv(offsets), **kw)
    else:
        raise ValueError(f"unknown statistic {kind}")
    write_json(out, rec)


def job_stats_merge(parts: Mapping[str, str], conditions: str, geometry_json: str, route: str, out: str) -> None:
    """The route's statistics JSON: every statistic record plus the headline numbers."""
    rec: dict[str, Any] = {"route": route}
    for name, path in parts.items():
        rec[name] = json.loads(Path(path).read_text())
    c = read_csv(conditions).set_index("condition")
    rec["headline"] = {
        "loss_recovered_vs_resample_cross_doc": float(c.loc["recon_goldnorm", "loss_recovered_vs_resample_cross_doc"]),
        "loss_recovered_vs_mean": float(c.loc["recon_goldnorm", "loss_recovered_vs_mean"]),
        "loss_recovered_vs_zero": float(c.loc["recon_goldnorm", "loss_recovered_vs_zero"]),
        "median_kl0_recon": float(c.loc["recon_goldnorm", "kl0_median"]),
        "median_kl0_gold_floor": float(c.loc["gold", "kl0_median"]),
        "fve": geometry_fve(read_json(geometry_json)),
        "n_sites": int(c.loc["recon_goldnorm", "n"]),
    }
    write_json(out, rec)


def job_gate(patch: str, reextract: Any, geometry_jsons: Mapping[str, str], config: dict, out: str) -> None:
    """The floor-check gate (``causal_kl.geometry.floor_gate``) over the run's files."""
    from causal_kl.geometry import floor_gate

    if reextract is not None and not isinstance(reextract, (str, Path)):
        reextract = str(reextract[0]) if len(reextract) else None  # an empty/one-element input list
    p = read_patch(patch, None, offsets=[0])
    gate = floor_gate(reextract, p, dict(geometry_jsons), config)
    write_json(out, gate)
    log.info("gate: %s", gate.get("line"))


# ---------------------------------------------------------------- figures

def job_fig1(per_site: Mapping[str, str], correlation: Mapping[str, str], png: str, svg: str, dpi: int,
             **style: Any) -> None:
    data = {r: pd.read_parquet(p) for r, p in per_site.items()}
    corr = {r: json.loads(Path(p).read_text()) for r, p in correlation.items()}
    figures.save(figures.fig1_geometry_vs_kl(data, corr, **style), png, svg, dpi)


def job_fig2(energy: Mapping[str, str], png: str, svg: str, dpi: int, **style: Any) -> None:
    data = {r: json.loads(Path(p).read_text()) for r, p in energy.items()}
    figures.save(figures.fig2_damage_per_energy(data, **style), png, svg, dpi)


def job_fig3(offsets: Mapping[str, str], png: str, svg: str, dpi: int, **style: Any) -> None:
    data = {r: read_csv(p) for r, p in offsets.items()}
    figures.save(figures.fig3_kl_by_offset(data, **style), png, svg, dpi)


def job_fig_routes(routes: str, png: str, svg: str, dpi: int, **style: Any) -> None:
    figures.save(figures.fig_routes(read_csv(routes), **style), png, svg, dpi)


def named(inputs: Any, prefix: str, route: str | None = None) -> dict[str, str]:
    """``{route: path}`` from Snakemake named inputs.

    Run-level rules name per-route inputs ``{prefix}_{route}``; per-route rules name the one
    input ``{prefix}`` and pass their ``route`` wildcard.
    """
    items = list(inputs.items()) if hasattr(inputs, "items") else []
    one = [str(v) for k, v in items if k == prefix]
    if one:
        return {route or "": one[0]}
    return {k[len(prefix) + 1:]: str(v) for k, v in items if k.startswith(prefix + "_")}


__all__ = [n for n in dir() if n.startswith("job_")] + ["named", "read_csv"]
