# The floor-check gate of each layer and the report: one self-contained HTML file per run (figures embedded), built
# from the analysis outputs only. `snakemake --report report.zip` additionally collects every figure and table
# wrapped in report(...) with its caption from reports/*.rst.


report: "../reports/workflow.rst"


rule gate:
    input:
        geometry=per_route(f"{RL}/geometry/{{route}}.json"),
        floors=f"{RL}/span1/patch/floors.parquet",
        reextract=[f"{RL}/reextract.json"] if stored_gold() != f"{RL}/gold.parquet" else [],
    output:
        record=f"{RL}/gate.json",
    log:
        f"{LL}/analysis/gate.log",
    params:
        min_cos=config["gold"]["min_cos"],
        gold_repatch_kl_max=config["patch"]["gold_repatch_kl_max"],
        expected_fve=lambda w: {r: {k: v for k, v in config["routes"][r].items() if k in ("expected_fve", "fve_tolerance")}
                                for r in routes_of(w.layer)},
        routes=lambda w: routes_of(w.layer),
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/gate.py"


def report_manifest():
    """What the report shows, file by file: per layer its gate, routes (tables, statistics, figures, SAELens-comparable
    scores, SAE sparsity, spans) and all-routes comparison; the cross-layer table and figure of a sweep."""
    layers = {}
    for layer in LAYERS:
        L = f"{R}/L{layer}"
        routes = {}
        for r in routes_of(layer):
            files = {name: f"{L}/tables/{r}/{name}.csv" for name in ROUTE_TABLES}
            files["stats"] = f"{L}/stats/{r}.json"
            files.update({key: f"{L}/figures/{r}/{name}.png" for key, name in FIG_NAMES.items()})
            if WHOLE_CONTEXT:
                files["whole_context"] = f"{L}/whole_context/{r}.json"
            if config["routes"][r]["kind"] == "sae":
                files["sae"] = f"{L}/sae/{r}.json"
            if EXTRA_SPANS:
                files["spans"] = {"table": f"{L}/tables/{r}/spans.csv", "figure": f"{L}/figures/{r}/spans.png",
                                  "per_span": {str(k): {"conditions": f"{L}/span{k}/tables/{r}/conditions.csv",
                                                        "offsets": f"{L}/span{k}/tables/{r}/offsets.csv",
                                                        "fig3": f"{L}/span{k}/figures/{r}/fig3_kl_by_offset.png",
                                                        "recon": f"{L}/span{k}/recon/{r}.parquet",
                                                        "sites": f"{L}/span{k}/sites.json"} for k in EXTRA_SPANS}}
            routes[r] = files
        comparison = {}
        if routes:
            comparison = {"routes": f"{L}/tables/routes.csv", "fig_routes": f"{L}/figures/routes_comparison.png",
                          **{key: f"{L}/figures/{name}.png" for key, name in FIG_NAMES.items()}}
        layers[str(layer)] = {"gate": f"{L}/gate.json", "routes": routes, "comparison": comparison}
    across = {}
    if across_layer_targets():
        across = {"table": f"{R}/tables/layers.csv", "figure": f"{R}/figures/layers.png"}
    return {"layers": layers, "across": across, "spans": SPANS}


def manifest_files(node):
    """Every path in a manifest (its files are the report's inputs)."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [p for v in node.values() for p in manifest_files(v)]
    return []


REPORT_MANIFEST = report_manifest()


rule report_html:
    input:
        run=f"{R}/run.json",
        files=manifest_files(REPORT_MANIFEST),
    output:
        report=report(f"{R}/report.html", caption="../reports/report.rst", category="Report"),
    log:
        f"{LOGS}/report.log",
    params:
        manifest=REPORT_MANIFEST,
        reference=SHOW_REF,
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/report_html.py"
