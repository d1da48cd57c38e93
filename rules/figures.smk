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
        per_site=P.per_site,
        correlation=P.route_stats["correlation"],
    output:
        **figure_outputs(P.route_figures["fig1"]),
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
        energy=P.route_stats["energy"],
    output:
        **figure_outputs(P.route_figures["fig2"]),
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
        offsets=P.route_tables["offsets"],
    output:
        **figure_outputs(P.route_figures["fig3"]),
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
        per_site=per_route(P.per_site),
        correlation=per_route(P.route_stats["correlation"]),
    output:
        **figure_outputs(P.point_figures["fig1"]),
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
        energy=per_route(P.route_stats["energy"]),
    output:
        **figure_outputs(P.point_figures["fig2"]),
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
        offsets=per_route(P.route_tables["offsets"]),
    output:
        **figure_outputs(P.point_figures["fig3"]),
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
        routes_table=P.point_tables["routes"],
    output:
        **figure_outputs(P.point_figures["routes"]),
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
        offsets=P.span_route_tables["offsets"],
    output:
        **figure_outputs(P.span_route_figures["fig3"], caption="span_offsets"),
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
        spans=P.route_tables["spans"],
    output:
        **figure_outputs(P.route_figures["spans"], caption="fig_spans"),
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
        layers=P.run_tables["layers"],
    output:
        **figure_outputs(P.run_figures["layers"], caption="fig_layers"),
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
        frontier=P.point_tables["frontier"],
    output:
        **figure_outputs(P.point_figures["frontier"], caption="frontier"),
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
        frontier=P.run_tables["frontier"],
    output:
        **figure_outputs(P.run_figures["frontier"], caption="frontier"),
    log:
        f"{LOGS}/analysis/fig_frontier_layers.log",
    params:
        dpi=FIGS["dpi"],
        style=FIG_STYLE["frontier_layers"],
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/fig_frontier_layers.py"
