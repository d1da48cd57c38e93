"""A tiny synthetic ``results/{run}/`` tree (every upstream file the analysis reads), for tests.

Numbers are random but shaped like the real thing: route KLs small, resample KLs large,
KL decaying with offset, some sites without a same-document sibling, some offsets past the
end of a document missing. Written through the package's own contracts and atomic IO.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from causal_kl.contracts import CONDITION_CHOICES, GEOMETRY, GOLD, PATCH, SITES
from causal_kl.io import write_json, write_parquet

FLOOR_SCALE = {"gold": 1e-4, "resample_same_doc": 10.0, "resample_cross_doc": 12.0, "zero": 6.0, "mean": 5.0}
ROUTE_SCALE = {"recon_goldnorm": 0.06, "recon_rawnorm": 0.08, "noise_matched": 0.025}


def make_results(root: Path, run: str = "syn", routes: tuple[str, ...] = ("toy",), n_docs: int = 6,
                 per_doc: int = 8, d: int = 16, seed: int = 0, gate_ok: bool = True) -> Path:
    """Write the synthetic run under ``root/results/{run}``; return that directory."""
    rng = np.random.default_rng(seed)
    R = Path(root) / "results" / run
    n = n_docs * per_doc
    site_ids = np.arange(n, dtype=np.int64)
    docs = np.repeat(np.arange(n_docs), per_doc)
    # the last document has one site only (no same-doc sibling); drop the rest of its sites
    keep = ~((docs == n_docs - 1) & (np.arange(n) % per_doc > 0))
    site_ids, docs = site_ids[keep], docs[keep]
    n = len(site_ids)
    positions = 50 + (np.arange(n) % per_doc) * 20
    token_ids = rng.integers(4, 200, size=n)
    write_parquet(R / "sites.parquet", {
        "site_id": site_ids, "doc_id": [f"syn:train:{k}" for k in docs], "position": positions,
        "token_id": token_ids, "next_token_id": rng.integers(4, 200, size=n), "shard": site_ids // 100,
    }, SITES)
    gold = rng.normal(size=(n, d)).astype(np.float32) + 0.5
    write_parquet(R / "gold.parquet", {"site_id": site_ids, "layer": np.full(n, 3), "activation": gold}, GOLD, d=d)
    write_parquet(R / "stored_gold.parquet", {"site_id": site_ids, "layer": np.full(n, 3), "activation": gold}, GOLD, d=d)
    same = np.full(n, -1, dtype=np.int64)
    cross = np.zeros(n, dtype=np.int64)
    for i in range(n):
        sib = site_ids[(docs == docs[i]) & (site_ids != site_ids[i])]
        if len(sib):
            same[i] = rng.choice(sib)
        cross[i] = rng.choice(site_ids[docs != docs[i]])
    write_parquet(R / "conditions" / "choices.parquet",
                  {"site_id": site_ids, "same_doc_source": same, "cross_doc_source": cross}, CONDITION_CHOICES)
    write_parquet(R / "conditions" / "mean.parquet", {"mean": gold.mean(axis=0, keepdims=True)})

    rows = []
    clean_ce = rng.gamma(2.0, 1.5, size=n)
    for i, s in enumerate(site_ids):
        n_off = 32 if i % 7 else 20  # some documents end before offset 31
        for k in range(n_off):
            decay = 1.0 if k == 0 else 1e-3 * 0.5 ** k
            rows.append((s, "", "clean", k, 0.0, clean_ce[i], 0.0))
            for c, scale in FLOOR_SCALE.items():
                if c == "resample_same_doc" and same[i] < 0:
                    continue
                kl = scale * decay * rng.lognormal(0, 0.5)
                rows.append((s, "", c, k, kl, clean_ce[i] + kl * 0.9, kl * 0.9 * rng.normal(1, 0.1)))
    for r_i, route in enumerate(routes):
        for i, s in enumerate(site_ids):
            n_off = 32 if i % 7 else 20
            for k in range(n_off):
                decay = 1.0 if k == 0 else 1e-3 * 0.5 ** k
                for c, scale in ROUTE_SCALE.items():
                    kl = scale * (1 + r_i) * decay * rng.lognormal(0, 0.8) * (1 + 0.3 * clean_ce[i])
                    rows.append((s, route, c, k, kl, clean_ce[i] + kl * 0.5, kl * 0.5 * rng.normal(1, 0.3)))
    cols = ["site_id", "route", "condition", "offset", "kl", "ce", "delta_ce"]
    patch = pd.DataFrame(rows, columns=cols)
    write_parquet(R / "patch.parquet", {c: patch[c].to_numpy() for c in cols}, PATCH)

    for r_i, route in enumerate(routes):
        recon = gold + rng.normal(scale=0.3 + 0.2 * r_i, size=gold.shape)
        g, r = gold.astype(np.float64), recon.astype(np.float64)
        gn, rn = np.linalg.norm(g, axis=1), np.linalg.norm(r, axis=1)
        cos = (g * r).sum(1) / gn / rn
        rg = r / rn[:, None] * gn[:, None]
        write_parquet(R / "geometry" / f"{route}.parquet", {
            "site_id": site_ids, "cos": cos, "direction_mse": 2 * (1 - cos), "gold_norm": gn,
            "recon_norm": rn, "noise_norm": np.linalg.norm(rg - g, axis=1)}, GEOMETRY)
        write_json(R / "geometry" / f"{route}.json", {"route": route, "variance": 0.6, "fve": float(1 - np.mean(2 * (1 - cos)) / 0.6),
                                                     "n": n, "recheck": None})
    write_json(R / "reextract.json", {"min_cos": 0.99995 if gate_ok else 0.9, "threshold": 0.999,
                                      "passed": gate_ok, "n": n})
    write_json(R / "run.json", {"run": run, "config": {"seed": 42, "corpus": {"name": "syn", "split": "train",
                                                                             "rows": [0, n_docs]}},
                                "config_hash": "abc123", "model": "tiny", "layer": 3,
                                "code_version": "test", "production": False})
    return R


def write_tokenizer(path: Path) -> Path:
    """A small tokenizer (from the shared test fixtures) saved in ``save_pretrained`` format."""
    import fixtures

    tok = fixtures.make_tokenizer()
    tok.save_pretrained(str(path))
    return path


if __name__ == "__main__":  # pragma: no cover
    import sys

    print(make_results(Path(sys.argv[1])))
    print(json.dumps({"ok": True}))


def build_outputs(R: Path, routes: tuple[str, ...] = ("toy",), tokenizer: Path | None = None,
                  reference: bool = False, n_boot: int = 50, config: dict | None = None) -> dict:
    """Run every analysis job (no Snakemake) on a synthetic run; return the report's file map."""
    from causal_kl import analysis_jobs as jobs

    R = Path(R)
    jobs.job_error_norms(R / "stored_gold.parquet", R / "conditions/choices.parquet", R / "conditions/mean.parquet",
                         R / "analysis/error_norms.parquet")
    files: dict = {}
    for r in routes:
        ps = R / f"analysis/{r}/per_site.parquet"
        jobs.job_per_site(R / "patch.parquet", R / f"geometry/{r}.parquet", R / "analysis/error_norms.parquet",
                          R / "sites.parquet", r, ps)
        t = {k: R / f"tables/{r}/{k}.csv" for k in ("conditions", "quartiles", "offsets", "token_classes")}
        jobs.job_conditions(ps, t["conditions"], n_boot, 0, 0.95, reference)
        jobs.job_quartiles(ps, R / f"geometry/{r}.json", R / "stored_gold.parquet", t["quartiles"], n_boot, 0, 0.95,
                           reference)
        jobs.job_offsets(R / "patch.parquet", r, t["offsets"], reference)
        if tokenizer is not None:
            jobs.job_token_classes(ps, str(tokenizer), {"space": r"^\s"}, t["token_classes"], reference,
                                   R / f"geometry/{r}.json")
        parts = {}
        for kind in ("correlation", "paired", "energy", "floor_offsets"):
            parts[kind] = R / f"stats/{r}/{kind}.json"
            kw = {"n_boot": n_boot} if kind in ("paired", "energy") else {}
            if kind == "floor_offsets":
                kw = {"tolerance": 2.0, "min_kl": 1e-4}
            jobs.job_stat(kind, parts[kind], per_site=ps, offsets=t["offsets"], **kw)
        jobs.job_stats_merge(parts, t["conditions"], R / f"geometry/{r}.json", r, R / f"stats/{r}.json")
        figs = {}
        for key, name in (("fig1", "fig1_geometry_vs_kl"), ("fig2", "fig2_damage_per_energy"),
                          ("fig3", "fig3_kl_by_offset")):
            figs[key] = R / f"figures/{r}/{name}.png"
        jobs.job_fig1({r: ps}, {r: parts["correlation"]}, figs["fig1"], figs["fig1"].with_suffix(".svg"), 80)
        jobs.job_fig2({r: parts["energy"]}, figs["fig2"], figs["fig2"].with_suffix(".svg"), 80)
        jobs.job_fig3({r: t["offsets"]}, figs["fig3"], figs["fig3"].with_suffix(".svg"), 80)
        files[r] = {**{k: str(v) for k, v in t.items()}, "stats": str(R / f"stats/{r}.json"),
                    **{k: str(v) for k, v in figs.items()}}
    jobs.job_routes({r: files[r]["conditions"] for r in routes}, {r: R / f"geometry/{r}.json" for r in routes},
                    R / "tables/routes.csv")
    jobs.job_fig_routes(R / "tables/routes.csv", R / "figures/routes_comparison.png",
                        R / "figures/routes_comparison.svg", 80)
    cfg = config or {"gold": {"min_cos": 0.999}, "patch": {"gold_repatch_kl_max": 0.01}, "routes": {}}
    jobs.job_gate(R / "patch.parquet", str(R / "reextract.json"), {r: str(R / f"geometry/{r}.json") for r in routes},
                  cfg, R / "gate.json")
    comparison = {"routes": str(R / "tables/routes.csv"), "fig_routes": str(R / "figures/routes_comparison.png")}
    return {"routes": files, "comparison": comparison}
