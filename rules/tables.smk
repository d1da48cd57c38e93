# The per-site tables every analysis starts from, and the write-up's tables (each its own target).
# Inputs are the patch/geometry/gold files; nothing here reruns patching.


rule error_norms:
    input:
        gold=stored_gold(),
        choices=f"{RL}/conditions/choices.parquet",
        mean=f"{RL}/conditions/mean.parquet",
    output:
        norms=f"{RL}/analysis/error_norms.parquet",
    log:
        f"{LL}/analysis/error_norms.log",
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/error_norms.py"


rule per_site:
    input:
        floors=f"{RL}/span1/patch/floors.parquet",
        patch=f"{RL}/span1/patch/{{route}}.parquet",
        geometry=f"{RL}/geometry/{{route}}.parquet",
        error_norms=f"{RL}/analysis/error_norms.parquet",
        sites=f"{R}/sites.parquet",
    output:
        table=f"{RL}/analysis/{{route}}/per_site.parquet",
    log:
        f"{LL}/analysis/{{route}}/per_site.log",
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/per_site.py"


rule table_conditions:
    input:
        per_site=f"{RL}/analysis/{{route}}/per_site.parquet",
        reference=reference_input("conditions"),
    output:
        table=report(
            f"{RL}/tables/{{route}}/conditions.csv",
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
        per_site=f"{RL}/analysis/{{route}}/per_site.parquet",
        geometry_json=f"{RL}/geometry/{{route}}.json",
        gold=stored_gold(),
        reference=reference_input("quartiles"),
    output:
        table=report(
            f"{RL}/tables/{{route}}/quartiles.csv",
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
        floors=f"{RL}/span1/patch/floors.parquet",
        patch=f"{RL}/span1/patch/{{route}}.parquet",
        reference=reference_input("offsets"),
    output:
        table=report(
            f"{RL}/tables/{{route}}/offsets.csv",
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
        per_site=f"{RL}/analysis/{{route}}/per_site.parquet",
        geometry_json=f"{RL}/geometry/{{route}}.json",
        reference=reference_input("token_classes"),
    output:
        table=report(
            f"{RL}/tables/{{route}}/token_classes.csv",
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
        conditions=per_route(f"{RL}/tables/{{route}}/conditions.csv"),
        geometry=per_route(f"{RL}/geometry/{{route}}.json"),
        whole_context=per_route(f"{RL}/whole_context/{{route}}.json") if WHOLE_CONTEXT else [],
        sae=sae_routes_of(f"{R}/L{{layer}}/sae/{{route}}.json"),
    output:
        table=report(
            f"{RL}/tables/routes.csv", caption="../reports/routes.rst", category="Tables", subcategory="all routes"
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
        floors=f"{RS}/patch/floors.parquet",
        patch=f"{RS}/patch/{{route}}.parquet",
    output:
        table=report(
            f"{RS}/tables/{{route}}/conditions.csv",
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
        floors=f"{RS}/patch/floors.parquet",
        patch=f"{RS}/patch/{{route}}.parquet",
    output:
        table=f"{RS}/tables/{{route}}/offsets.csv",
    log:
        f"{LS}/analysis/{{route}}/table_span_offsets.log",
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/table_span_offsets.py"


rule table_spans:
    input:
        floors=lambda w: expand(f"{R}/L{w.layer}/span{{span}}/patch/floors.parquet", span=spans_of(w.route)),
        patches=lambda w: expand(f"{R}/L{w.layer}/span{{span}}/patch/{w.route}.parquet", span=spans_of(w.route)),
        summaries=lambda w: expand(f"{R}/L{w.layer}/span{{span}}/sites.json", span=extra_spans_of(w.route)),
    output:
        table=report(
            f"{RL}/tables/{{route}}/spans.csv", caption="../reports/spans.rst", category="Spans", subcategory="{route}"
        ),
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
        conditions=[f"{R}/L{l}/tables/{r}/conditions.csv" for l in LAYERS for r in routes_of(l)],
        geometry=[f"{R}/L{l}/geometry/{r}.json" for l in LAYERS for r in routes_of(l)],
    output:
        table=report(
            f"{R}/tables/layers.csv", caption="../reports/layers.rst", category="Tables", subcategory="all layers"
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
        routes_table=f"{RL}/tables/routes.csv",
        conditions=per_route(f"{RL}/tables/{{route}}/conditions.csv"),
    output:
        table=report(
            f"{RL}/tables/frontier.csv", caption="../reports/frontier.rst", category="Tables", subcategory="all routes"
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
        frontiers=[f"{R}/L{l}/tables/frontier.csv" for l in LAYERS],
    output:
        table=report(
            f"{R}/tables/frontier.csv", caption="../reports/frontier.rst", category="Tables", subcategory="all layers"
        ),
    log:
        f"{LOGS}/analysis/table_frontier_layers.log",
    params:
        layers=LAYERS,
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/table_frontier_layers.py"
