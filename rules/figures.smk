# The write-up's figures: each per route and for all routes of the run, plus the route comparison; each its
# own target. Plotting options are params, so editing one (config analysis.figures.*) reruns only that figure.

FIG_STYLE = {
    "fig1": {**FIGS["fig1"], "subsample": AN["fig1_subsample"], "seed": config["seed"], "kl_floor": FIGS["kl_floor"]},
    "fig2": FIGS["fig2"],
    "fig3": {**FIGS["fig3"], "kl_floor": FIGS["kl_floor"]},
    "routes": FIGS["routes"],
}


rule fig1_route:
    input:
        per_site=f"{R}/analysis/{{route}}/per_site.parquet",
        correlation=f"{R}/stats/{{route}}/correlation.json",
    output:
        **figure_outputs(f"{R}/figures/{{route}}/fig1_geometry_vs_kl"),
    log:
        f"{LOGS}/analysis/{{route}}/fig1.log",
    params:
        dpi=FIGS["dpi"],
        style=FIG_STYLE["fig1"],
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/fig1_route.py"


rule fig2_route:
    input:
        energy=f"{R}/stats/{{route}}/energy.json",
    output:
        **figure_outputs(f"{R}/figures/{{route}}/fig2_damage_per_energy"),
    log:
        f"{LOGS}/analysis/{{route}}/fig2.log",
    params:
        dpi=FIGS["dpi"],
        style=FIG_STYLE["fig2"],
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/fig2_route.py"


rule fig3_route:
    input:
        offsets=f"{R}/tables/{{route}}/offsets.csv",
    output:
        **figure_outputs(f"{R}/figures/{{route}}/fig3_kl_by_offset"),
    log:
        f"{LOGS}/analysis/{{route}}/fig3.log",
    params:
        dpi=FIGS["dpi"],
        style=FIG_STYLE["fig3"],
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/fig3_route.py"


rule fig1_all:
    input:
        per_site=per_route(f"{R}/analysis/{{route}}/per_site.parquet"),
        correlation=per_route(f"{R}/stats/{{route}}/correlation.json"),
    output:
        **figure_outputs(f"{R}/figures/fig1_geometry_vs_kl"),
    log:
        f"{LOGS}/analysis/fig1_all.log",
    params:
        dpi=FIGS["dpi"],
        style=FIG_STYLE["fig1"],
        routes=ROUTES,
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/fig1_all.py"


rule fig2_all:
    input:
        energy=per_route(f"{R}/stats/{{route}}/energy.json"),
    output:
        **figure_outputs(f"{R}/figures/fig2_damage_per_energy"),
    log:
        f"{LOGS}/analysis/fig2_all.log",
    params:
        dpi=FIGS["dpi"],
        style=FIG_STYLE["fig2"],
        routes=ROUTES,
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/fig2_all.py"


rule fig3_all:
    input:
        offsets=per_route(f"{R}/tables/{{route}}/offsets.csv"),
    output:
        **figure_outputs(f"{R}/figures/fig3_kl_by_offset"),
    log:
        f"{LOGS}/analysis/fig3_all.log",
    params:
        dpi=FIGS["dpi"],
        style=FIG_STYLE["fig3"],
        routes=ROUTES,
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/fig3_all.py"


rule fig_routes:
    input:
        routes_table=f"{R}/tables/routes.csv",
    output:
        **figure_outputs(f"{R}/figures/routes_comparison"),
    log:
        f"{LOGS}/analysis/fig_routes.log",
    params:
        dpi=FIGS["dpi"],
        style=FIG_STYLE["routes"],
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/fig_routes.py"
