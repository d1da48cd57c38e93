"""Jobs of ``rules/statistics.smk``: one JSON record per statistic of a route, and the route's merged record."""

from __future__ import annotations

from causal_kl import records
from causal_kl.io import read_csv, read_json, read_per_site, write_json


def stat_correlation(per_site: str, record: str, layer: str, route: str) -> None:
    """§3: Spearman ρ of direction-MSE and of clean CE against KL@0."""
    write_json(record, records.correlation_stats(read_per_site(per_site, records.CORRELATION_COLUMNS)))


def stat_paired(per_site: str, record: str, n_boot: int, seed: int, ci: float, layer: str, route: str) -> None:
    """§4: reconstruction vs matched noise per site (median ratio with CI, share worse, Wilcoxon)."""
    write_json(record, records.paired_stats(read_per_site(per_site, records.PAIRED_COLUMNS), n_boot=n_boot, seed=seed, ci=ci))


def stat_energy(per_site: str, record: str, n_boot: int, seed: int, ci: float, layer: str, route: str) -> None:
    """§4: damage per unit squared error norm (noise = 1) and the mixture α."""
    write_json(record, records.energy_stats(read_per_site(per_site, records.ENERGY_COLUMNS), n_boot=n_boot, seed=seed, ci=ci))


def stat_floor_offsets(offsets: str, record: str, tolerance: float, min_kl: float, layer: str, route: str) -> None:
    """§5: the first offset at which each condition is at the gold floor."""
    write_json(record, records.floor_offsets(read_csv(offsets), tolerance=tolerance, min_kl=min_kl))


def stats_route(correlation: str, paired: str, energy: str, floor_offsets: str, conditions: str, geometry_json: str,
                record: str, layer: str, route: str) -> None:
    """A route's statistics JSON: every statistic record plus the headline numbers."""
    merged = {"route": route, "correlation": read_json(correlation), "paired": read_json(paired),
              "energy": read_json(energy), "floor_offsets": read_json(floor_offsets)}
    merged["headline"] = records.headline(read_csv(conditions), read_json(geometry_json).get("fve"))
    write_json(record, merged)
