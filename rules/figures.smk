# The write-up's figures: each per route and for all routes of the run, plus the route comparison; each its
# own target. Plotting options are params, so editing one (config analysis.figures.*) reruns only that figure.

FIG_STYLE = canonical(
    {
        "fig1": {
            **FIGS["fig1"],
            "subsample": AN["fig1_subsample"],
            "seed": config["seed"],
            "kl_floor": FIGS["kl_floor"],
        },
        "fig2": FIGS["fig2"],
        "fig3": {**FIGS["fig3"], "kl_floor": FIGS["kl_floor"]},
        "routes": FIGS["routes"],
        "spans": {**FIGS["spans"], "kl_floor": FIGS["kl_floor"]},
        "layers": {**FIGS["layers"], "kl_floor": FIGS["kl_floor"]},
        "frontier": {**FIGS["frontier"], "kl_floor": FIGS["kl_floor"]},
        "frontier_layers": {**FIGS["frontier_layers"], "kl_floor": FIGS["kl_floor"]},
    }
)


rule fig1_route:
    input:
        per_site=f"{RL}/analysis/{{route}}/per_site.parquet",
        correlation=f"{RL}/stats/{{route}}/correlation.json",
    output:
        **figure_outputs(f"{RL}/figures/{{route}}/fig1_geometry_vs_kl"),
    log:
        f"{LL}/analysis/{{route}}/fig1.log",
    params:
        dpi=FIGS["dpi"],
        style=FIG_STYLE["fig1"],
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/fig1_route.py"


rule fig2_route:
    input:
        energy=f"{RL}/stats/{{route}}/energy.json",
    output:
        **figure_outputs(f"{RL}/figures/{{route}}/fig2_damage_per_energy"),
    log:
        f"{LL}/analysis/{{route}}/fig2.log",
    params:
        dpi=FIGS["dpi"],
        style=FIG_STYLE["fig2"],
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/fig2_route.py"


rule fig3_route:
    input:
        offsets=f"{RL}/tables/{{route}}/offsets.csv",
    output:
        **figure_outputs(f"{RL}/figures/{{route}}/fig3_kl_by_offset"),
    log:
        f"{LL}/analysis/{{route}}/fig3.log",
    params:
        dpi=FIGS["dpi"],
        style=FIG_STYLE["fig3"],
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/fig3_route.py"


rule fig1_all:
    input:
        per_site=per_route(f"{RL}/analysis/{{route}}/per_site.parquet"),
        correlation=per_route(f"{RL}/stats/{{route}}/correlation.json"),
    output:
        **figure_outputs(f"{RL}/figures/fig1_geometry_vs_kl"),
    log:
        f"{LL}/analysis/fig1_all.log",
    params:
        dpi=FIGS["dpi"],
        style=FIG_STYLE["fig1"],
        routes=lambda w: routes_of(w.layer),
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/fig1_all.py"


rule fig2_all:
    input:
        energy=per_route(f"{RL}/stats/{{route}}/energy.json"),
    output:
        **figure_outputs(f"{RL}/figures/fig2_damage_per_energy"),
    log:
        f"{LL}/analysis/fig2_all.log",
    params:
        dpi=FIGS["dpi"],
        style=FIG_STYLE["fig2"],
        routes=lambda w: routes_of(w.layer),
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/fig2_all.py"


rule fig3_all:
    input:
        offsets=per_route(f"{RL}/tables/{{route}}/offsets.csv"),
    output:
        **figure_outputs(f"{RL}/figures/fig3_kl_by_offset"),
    log:
        f"{LL}/analysis/fig3_all.log",
    params:
        dpi=FIGS["dpi"],
        style=FIG_STYLE["fig3"],
        routes=lambda w: routes_of(w.layer),
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/fig3_all.py"


rule fig_routes:
    input:
        routes_table=f"{RL}/tables/routes.csv",
    output:
        **figure_outputs(f"{RL}/figures/routes_comparison"),
    log:
        f"{LL}/analysis/fig_routes.log",
    params:
        dpi=FIGS["dpi"],
        style=FIG_STYLE["routes"],
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/fig_routes.py"


rule fig3_span:
    wildcard_constraints:
        span=EXTRA_SPAN,
    input:
        offsets=f"{RS}/tables/{{route}}/offsets.csv",
    output:
        **figure_outputs(f"{RS}/figures/{{route}}/fig3_kl_by_offset", caption="span_offsets"),
    log:
        f"{LS}/analysis/{{route}}/fig3.log",
    params:
        dpi=FIGS["dpi"],
        style=FIG_STYLE["fig3"],
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/fig3_span.py"


rule fig_spans:
    input:
        spans=f"{RL}/tables/{{route}}/spans.csv",
    output:
        **figure_outputs(f"{RL}/figures/{{route}}/spans", caption="fig_spans"),
    log:
        f"{LL}/analysis/{{route}}/fig_spans.log",
    params:
        dpi=FIGS["dpi"],
        style=FIG_STYLE["spans"],
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/fig_spans.py"


rule fig_layers:
    input:
        layers=f"{R}/tables/layers.csv",
    output:
        **figure_outputs(f"{R}/figures/layers", caption="fig_layers"),
    log:
        f"{LOGS}/analysis/fig_layers.log",
    params:
        dpi=FIGS["dpi"],
        style=FIG_STYLE["layers"],
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/fig_layers.py"


rule fig_frontier:
    input:
        frontier=f"{RL}/tables/frontier.csv",
    output:
        **figure_outputs(f"{RL}/figures/frontier", caption="frontier"),
    log:
        f"{LL}/analysis/fig_frontier.log",
    params:
        dpi=FIGS["dpi"],
        style=FIG_STYLE["frontier"],
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/fig_frontier.py"


rule fig_frontier_layers:
    input:
        frontier=f"{R}/tables/frontier.csv",
    output:
        **figure_outputs(f"{R}/figures/frontier", caption="frontier"),
    log:
        f"{LOGS}/analysis/fig_frontier_layers.log",
    params:
        dpi=FIGS["dpi"],
        style=FIG_STYLE["frontier_layers"],
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/fig_frontier_layers.py"
