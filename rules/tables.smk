# The per-site tables every analysis starts from, and the write-up's tables (each its own target).
# Inputs are the patch/geometry/gold files; nothing here reruns patching.


rule error_norms:
    input:
        gold=stored_gold(),
        choices=P.conditions["choices"],
        mean=P.conditions["mean"],
    output:
        norms=P.error_norms,
    log:
        f"{LL}/analysis/error_norms.log",
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/error_norms.py"


rule per_site:
    input:
        floors=fill(P.floors, span=1),
        patch=fill(P.patch, span=1),
        geometry=P.geometry,
        error_norms=P.error_norms,
        sites=P.sites,
    output:
        table=P.per_site,
    log:
        f"{LL}/analysis/{{route}}/per_site.log",
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/per_site.py"


rule table_conditions:
    input:
        per_site=P.per_site,
        reference=reference_input("conditions"),
    output:
        table=report(
            P.route_tables["conditions"],
            caption="../reports/conditions.rst",
            category="Tables",
            subcategory="{route}",
        ),
    log:
        f"{LL}/analysis/{{route}}/table_conditions.log",
    params:
        **BOOTSTRAP,
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/table_conditions.py"


rule table_quartiles:
    input:
        per_site=P.per_site,
        geometry_json=P.geometry_summary,
        gold=stored_gold(),
        reference=reference_input("quartiles"),
    output:
        table=report(
            P.route_tables["quartiles"],
            caption="../reports/quartiles.rst",
            category="Tables",
            subcategory="{route}",
        ),
    log:
        f"{LL}/analysis/{{route}}/table_quartiles.log",
    params:
        **BOOTSTRAP,
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/table_quartiles.py"


rule table_offsets:
    input:
        floors=fill(P.floors, span=1),
        patch=fill(P.patch, span=1),
        reference=reference_input("offsets"),
    output:
        table=report(
            P.route_tables["offsets"],
            caption="../reports/offsets.rst",
            category="Tables",
            subcategory="{route}",
        ),
    log:
        f"{LL}/analysis/{{route}}/table_offsets.log",
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/table_offsets.py"


rule table_token_classes:
    input:
        per_site=P.per_site,
        geometry_json=P.geometry_summary,
        reference=reference_input("token_classes"),
    output:
        table=report(
            P.route_tables["token_classes"],
            caption="../reports/token_classes.rst",
            category="Tables",
            subcategory="{route}",
        ),
    log:
        f"{LL}/analysis/{{route}}/table_token_classes.log",
    params:
        classes=AN["token_classes"],
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/table_token_classes.py"


rule table_routes:
    input:
        conditions=per_route(P.route_tables["conditions"]),
        geometry=per_route(P.geometry_summary),
        whole_context=per_route(P.whole_context) if WHOLE_CONTEXT else [],
        sae=sae_routes_of(P.sae),
    output:
        table=report(
            P.point_tables["routes"], caption="../reports/routes.rst", category="Tables", subcategory="all routes"
        ),
    log:
        f"{LL}/analysis/table_routes.log",
    params:
        routes=lambda w: routes_of(w.layer),
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/table_routes.py"


rule table_span_conditions:
    wildcard_constraints:
        span=EXTRA_SPAN,
    input:
        floors=P.floors,
        patch=P.patch,
    output:
        table=report(
            P.span_route_tables["conditions"],
            caption="../reports/span_conditions.rst",
            category="Spans",
            subcategory="{route}",
        ),
    log:
        f"{LS}/analysis/{{route}}/table_span_conditions.log",
    params:
        **BOOTSTRAP,
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/table_span_conditions.py"


rule table_span_offsets:
    wildcard_constraints:
        span=EXTRA_SPAN,
    input:
        floors=P.floors,
        patch=P.patch,
    output:
        table=P.span_route_tables["offsets"],
    log:
        f"{LS}/analysis/{{route}}/table_span_offsets.log",
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/table_span_offsets.py"


rule table_spans:
    input:
        floors=lambda w: expand(P.floors, layer=w.layer, span=spans_of(w.route)),
        patches=lambda w: expand(P.patch, layer=w.layer, route=w.route, span=spans_of(w.route)),
        summaries=lambda w: expand(P.span_sites, layer=w.layer, span=extra_spans_of(w.route)),
    output:
        table=report(P.route_tables["spans"], caption="../reports/spans.rst", category="Spans", subcategory="{route}"),
    log:
        f"{LL}/analysis/{{route}}/table_spans.log",
    params:
        **BOOTSTRAP,
        spans=lambda w: spans_of(w.route),
        offsets=SPAN_OFFSETS,
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/table_spans.py"


# across layers: the residual-stream points (LAYERS, resid_post) only; a point at another hook has its own section


rule table_layers:
    input:
        conditions=[fill(P.route_tables["conditions"], layer=l, route=r) for l in LAYERS for r in routes_of(l)],
        geometry=[fill(P.geometry_summary, layer=l, route=r) for l in LAYERS for r in routes_of(l)],
    output:
        table=report(
            P.run_tables["layers"], caption="../reports/layers.rst", category="Tables", subcategory="all layers"
        ),
    log:
        f"{LOGS}/analysis/table_layers.log",
    params:
        pairs=[[l, r] for l in LAYERS for r in routes_of(l)],
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/table_layers.py"


rule table_frontier:
    input:
        routes_table=P.point_tables["routes"],
        conditions=per_route(P.route_tables["conditions"]),
    output:
        table=report(
            P.point_tables["frontier"], caption="../reports/frontier.rst", category="Tables", subcategory="all routes"
        ),
    log:
        f"{LL}/analysis/table_frontier.log",
    params:
        kinds=lambda w: {r: config["routes"][r]["kind"] for r in routes_of(w.layer)},
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/table_frontier.py"


rule table_frontier_layers:
    input:
        frontiers=[fill(P.point_tables["frontier"], layer=l) for l in LAYERS],
    output:
        table=report(
            P.run_tables["frontier"], caption="../reports/frontier.rst", category="Tables", subcategory="all layers"
        ),
    log:
        f"{LOGS}/analysis/table_frontier_layers.log",
    params:
        layers=LAYERS,
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/table_frontier_layers.py"
