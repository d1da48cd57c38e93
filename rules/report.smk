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
        expected_fve=lambda w: {
            r: {k: v for k, v in config["routes"][r].items() if k in ("expected_fve", "fve_tolerance")}
            for r in routes_of(w.layer)
        },
        routes=lambda w: routes_of(w.layer),
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/gate.py"


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
