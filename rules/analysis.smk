# Analysis: every table, statistic and figure of the write-up, each its own rule and target.
# Inputs are the patch/geometry/gold files; nothing here reruns patching. Plotting parameters
# are `params:`, so editing one (config analysis.figures.*) reruns only that figure.
from causal_kl.config import show_reference as _show_reference
from causal_kl.tables import REFERENCE_DIR as _REFERENCE_DIR

AN = config["analysis"]
FIGS = AN["figures"]
SHOW_REF = _show_reference(config)
REPORT_CAPTIONS = "../reports"
FIG_NAMES = {"fig1": "fig1_geometry_vs_kl", "fig2": "fig2_damage_per_energy", "fig3": "fig3_kl_by_offset"}
ROUTE_TABLES = ("conditions", "quartiles", "offsets", "token_classes")
STATS = ("correlation", "paired", "energy", "floor_offsets")


def reference_input(name):
    """The published numbers a table is compared with, as an input (only when they are shown)."""
    return [str(_REFERENCE_DIR / name)] if SHOW_REF else []


def per_route(pattern, prefix):
    """``{prefix}_{route}: pattern.format(route)`` for every route of the run (for run-level rules)."""
    return {f"{prefix}_{r}": pattern.format(route=r) for r in ROUTES}


def analysis_targets():
    """Every table, statistic and figure of the run, plus the gate and the report."""
    t = [f"{R}/gate.json", f"{R}/report.html"]
    for r in ROUTES:
        t += [f"{R}/tables/{r}/{name}.csv" for name in ROUTE_TABLES]
        t += [f"{R}/stats/{r}/{name}.json" for name in STATS] + [f"{R}/stats/{r}.json"]
        t += [f"{R}/figures/{r}/{f}.{ext}" for f in FIG_NAMES.values() for ext in ("png", "svg")]
    if ROUTES:
        t += [f"{R}/tables/routes.csv"]
        t += [f"{R}/figures/{f}.{ext}" for f in list(FIG_NAMES.values()) + ["routes_comparison"] for ext in ("png", "svg")]
    return t


# ------------------------------------------------------------------ data preparation


rule error_norms:
    input:
        gold=stored_gold(),
        choices=f"{R}/conditions/choices.parquet",
        mean=f"{R}/conditions/mean.parquet",
    output:
        f"{R}/analysis/error_norms.parquet",
    log:
        f"{LOGS}/analysis/error_norms.log",
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/analysis_error_norms.py"


rule per_site:
    input:
        patch=f"{R}/patch.parquet",
        geometry=f"{R}/geometry/{{route}}.parquet",
        error_norms=f"{R}/analysis/error_norms.parquet",
        sites=f"{R}/sites.parquet",
    output:
        f"{R}/analysis/{{route}}/per_site.parquet",
    log:
        f"{LOGS}/analysis/{{route}}/per_site.log",
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/analysis_per_site.py"


# ------------------------------------------------------------------ tables


rule table_conditions:
    input:
        per_site=f"{R}/analysis/{{route}}/per_site.parquet",
        reference=reference_input("conditions.csv"),
    output:
        report(f"{R}/tables/{{route}}/conditions.csv", caption="../reports/conditions.rst",
               category="Tables", subcategory="{route}"),
    log:
        f"{LOGS}/analysis/{{route}}/table_conditions.log",
    params:
        n_boot=AN["bootstrap"],
        seed=config["seed"],
        ci=AN["ci"],
        reference=SHOW_REF,
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/table_conditions.py"


rule table_quartiles:
    input:
        per_site=f"{R}/analysis/{{route}}/per_site.parquet",
        geometry_json=f"{R}/geometry/{{route}}.json",
        gold=stored_gold(),
        reference=reference_input("quartiles.csv"),
    output:
        report(f"{R}/tables/{{route}}/quartiles.csv", caption="../reports/quartiles.rst",
               category="Tables", subcategory="{route}"),
    log:
        f"{LOGS}/analysis/{{route}}/table_quartiles.log",
    params:
        n_boot=AN["bootstrap"],
        seed=config["seed"],
        ci=AN["ci"],
        reference=SHOW_REF,
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/table_quartiles.py"


rule table_offsets:
    input:
        patch=f"{R}/patch.parquet",
        reference=reference_input("offsets.csv"),
    output:
        report(f"{R}/tables/{{route}}/offsets.csv", caption="../reports/offsets.rst",
               category="Tables", subcategory="{route}"),
    log:
        f"{LOGS}/analysis/{{route}}/table_offsets.log",
    params:
        reference=SHOW_REF,
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/table_offsets.py"


rule table_token_classes:
    input:
        per_site=f"{R}/analysis/{{route}}/per_site.parquet",
        geometry_json=f"{R}/geometry/{{route}}.json",
        model=model_input(),
        reference=reference_input("token_classes.csv"),
    output:
        report(f"{R}/tables/{{route}}/token_classes.csv", caption="../reports/token_classes.rst",
               category="Tables", subcategory="{route}"),
    log:
        f"{LOGS}/analysis/{{route}}/table_token_classes.log",
    params:
        model=model_path(),
        classes=AN["token_classes"],
        reference=SHOW_REF,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/table_token_classes.py"


rule table_routes:
    input:
        unpack(lambda w: {**per_route(f"{R}/tables/{{route}}/conditions.csv", "conditions"),
                          **per_route(f"{R}/geometry/{{route}}.json", "geometry")}),
    output:
        report(f"{R}/tables/routes.csv", caption="../reports/routes.rst", category="Tables",
               subcategory="all routes"),
    log:
        f"{LOGS}/analysis/table_routes.log",
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/table_routes.py"


# ------------------------------------------------------------------ statistics


rule stat_correlation:
    input:
        per_site=f"{R}/analysis/{{route}}/per_site.parquet",
    output:
        f"{R}/stats/{{route}}/correlation.json",
    log:
        f"{LOGS}/analysis/{{route}}/stat_correlation.log",
    params:
        kind="correlation",
        options={},
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/stat_one.py"


rule stat_paired:
    input:
        per_site=f"{R}/analysis/{{route}}/per_site.parquet",
    output:
        f"{R}/stats/{{route}}/paired.json",
    log:
        f"{LOGS}/analysis/{{route}}/stat_paired.log",
    params:
        kind="paired",
        options={"n_boot": AN["bootstrap"], "seed": config["seed"], "ci": AN["ci"]},
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/stat_one.py"


rule stat_energy:
    input:
        per_site=f"{R}/analysis/{{route}}/per_site.parquet",
    output:
        f"{R}/stats/{{route}}/energy.json",
    log:
        f"{LOGS}/analysis/{{route}}/stat_energy.log",
    params:
        kind="energy",
        options={"n_boot": AN["bootstrap"], "seed": config["seed"], "ci": AN["ci"]},
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/stat_one.py"


rule stat_floor_offsets:
    input:
        offsets=f"{R}/tables/{{route}}/offsets.csv",
    output:
        f"{R}/stats/{{route}}/floor_offsets.json",
    log:
        f"{LOGS}/analysis/{{route}}/stat_floor_offsets.log",
    params:
        kind="floor_offsets",
        options={"tolerance": AN["floor_tolerance"], "min_kl": AN["floor_min_kl"]},
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/stat_one.py"


rule stats_route:
    input:
        **{f"part_{name}": f"{R}/stats/{{route}}/{name}.json" for name in STATS},
        conditions=f"{R}/tables/{{route}}/conditions.csv",
        geometry_json=f"{R}/geometry/{{route}}.json",
    output:
        f"{R}/stats/{{route}}.json",
    log:
        f"{LOGS}/analysis/{{route}}/stats.log",
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/stats_merge.py"


rule gate:
    input:
        unpack(lambda w: per_route(f"{R}/geometry/{{route}}.json", "geometry")),
        patch=f"{R}/patch.parquet",
        reextract=[f"{R}/reextract.json"] if stored_gold() != f"{R}/gold.parquet" else [],
    output:
        f"{R}/gate.json",
    log:
        f"{LOGS}/analysis/gate.log",
    params:
        min_cos=config["gold"]["min_cos"],
        gold_repatch_kl_max=config["patch"]["gold_repatch_kl_max"],
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/gate.py"


# ------------------------------------------------------------------ figures (per route, then all routes)


rule fig1_route:
    input:
        per_site=f"{R}/analysis/{{route}}/per_site.parquet",
        correlation=f"{R}/stats/{{route}}/correlation.json",
    output:
        png=report(f"{R}/figures/{{route}}/fig1_geometry_vs_kl.png", caption="../reports/fig1.rst",
                   category="Figures", subcategory="{route}"),
        svg=f"{R}/figures/{{route}}/fig1_geometry_vs_kl.svg",
    log:
        f"{LOGS}/analysis/{{route}}/fig1.log",
    params:
        dpi=FIGS["dpi"],
        style={**FIGS["fig1"], "subsample": AN["fig1_subsample"], "seed": config["seed"], "kl_floor": FIGS["kl_floor"]},
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/fig1.py"


rule fig2_route:
    input:
        energy=f"{R}/stats/{{route}}/energy.json",
    output:
        png=report(f"{R}/figures/{{route}}/fig2_damage_per_energy.png", caption="../reports/fig2.rst",
                   category="Figures", subcategory="{route}"),
        svg=f"{R}/figures/{{route}}/fig2_damage_per_energy.svg",
    log:
        f"{LOGS}/analysis/{{route}}/fig2.log",
    params:
        dpi=FIGS["dpi"],
        style=FIGS["fig2"],
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/fig2.py"


rule fig3_route:
    input:
        offsets=f"{R}/tables/{{route}}/offsets.csv",
    output:
        png=report(f"{R}/figures/{{route}}/fig3_kl_by_offset.png", caption="../reports/fig3.rst",
                   category="Figures", subcategory="{route}"),
        svg=f"{R}/figures/{{route}}/fig3_kl_by_offset.svg",
    log:
        f"{LOGS}/analysis/{{route}}/fig3.log",
    params:
        dpi=FIGS["dpi"],
        style={**FIGS["fig3"], "kl_floor": FIGS["kl_floor"]},
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/fig3.py"


rule fig1_all:
    input:
        unpack(lambda w: {**per_route(f"{R}/analysis/{{route}}/per_site.parquet", "per_site"),
                          **per_route(f"{R}/stats/{{route}}/correlation.json", "correlation")}),
    output:
        png=report(f"{R}/figures/fig1_geometry_vs_kl.png", caption="../reports/fig1.rst",
                   category="Figures", subcategory="all routes"),
        svg=f"{R}/figures/fig1_geometry_vs_kl.svg",
    log:
        f"{LOGS}/analysis/fig1_all.log",
    params:
        dpi=FIGS["dpi"],
        style={**FIGS["fig1"], "subsample": AN["fig1_subsample"], "seed": config["seed"], "kl_floor": FIGS["kl_floor"]},
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/fig1.py"


rule fig2_all:
    input:
        unpack(lambda w: per_route(f"{R}/stats/{{route}}/energy.json", "energy")),
    output:
        png=report(f"{R}/figures/fig2_damage_per_energy.png", caption="../reports/fig2.rst",
                   category="Figures", subcategory="all routes"),
        svg=f"{R}/figures/fig2_damage_per_energy.svg",
    log:
        f"{LOGS}/analysis/fig2_all.log",
    params:
        dpi=FIGS["dpi"],
        style=FIGS["fig2"],
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/fig2.py"


rule fig3_all:
    input:
        unpack(lambda w: per_route(f"{R}/tables/{{route}}/offsets.csv", "offsets")),
    output:
        png=report(f"{R}/figures/fig3_kl_by_offset.png", caption="../reports/fig3.rst",
                   category="Figures", subcategory="all routes"),
        svg=f"{R}/figures/fig3_kl_by_offset.svg",
    log:
        f"{LOGS}/analysis/fig3_all.log",
    params:
        dpi=FIGS["dpi"],
        style={**FIGS["fig3"], "kl_floor": FIGS["kl_floor"]},
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/fig3.py"


rule fig_routes:
    input:
        routes=f"{R}/tables/routes.csv",
    output:
        png=report(f"{R}/figures/routes_comparison.png", caption="../reports/fig_routes.rst",
                   category="Figures", subcategory="all routes"),
        svg=f"{R}/figures/routes_comparison.svg",
    log:
        f"{LOGS}/analysis/fig_routes.log",
    params:
        dpi=FIGS["dpi"],
        style=FIGS["routes"],
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/fig_routes.py"
