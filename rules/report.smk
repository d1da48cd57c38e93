# The floor-check gate of each layer and the report: a main page per run (gate, provenance, across layers, per layer
# the routes table, comparison figures and frontier) and one page per route and layer (its details), each
# self-contained (figures embedded), built from the analysis outputs only. A route page reads nothing of other routes,
# so adding a route writes its page and the main page, and leaves the other pages alone.
# `snakemake --report report.zip` additionally collects every figure and table wrapped in report(...) with its
# caption from reports/*.rst.


report: "../reports/workflow.rst"


rule gate:
    input:
        geometry=per_route(P.geometry_summary),
        floors=fill(P.floors, span=1),
        reextract=lambda w: [fill(P.reextract_summary, layer=w.layer)] if reads_stored_gold(w.layer) else [],
    output:
        record=P.gate,
    log:
        f"{LL}/analysis/gate.log",
    params:
        min_cos=config["gold"]["min_cos"],
        gold_repatch_kl_max=config["patch"]["gold_repatch_kl_max"],
        expected_fve=lambda w: {
            r: {k: v for k, v in config["routes"][r].items() if k in ("expected_fve", "fve_tolerance")}
            for r in routes_of(w.layer)
        },
        routes=lambda w: routes_of(w.layer),
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/gate.py"


rule report_route:
    input:
        files=lambda w: manifest_files(route_manifest(w.layer, w.route)),
    output:
        page=report(
            P.route_page,
            caption="../reports/report_route.rst",
            category="Report",
            subcategory="route pages",
        ),
    log:
        f"{LL}/report/{{route}}.log",
    params:
        manifest=lambda w: route_manifest(w.layer, w.route),
        main=P.report,
        run_name=RUN,
        route_config=lambda w: route_settings(w.route),
        reference=SHOW_REF,
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/report_route.py"


rule report_html:
    input:
        run=P.run_record,
        files=manifest_files(REPORT_MANIFEST),
        pages=route_pages(),
    output:
        report=report(P.report, caption="../reports/report.rst", category="Report"),
    log:
        f"{LOGS}/report.log",
    params:
        manifest=REPORT_MANIFEST,
        reference=SHOW_REF,
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/report_html.py"
