# The floor-check gate and the report: one self-contained HTML file per run (figures embedded), built from the
# analysis outputs only. `snakemake --report report.zip` additionally collects every figure and table wrapped
# in report(...) with its caption from reports/*.rst.


report: "../reports/workflow.rst"


def comparison_input(path):
    """An all-routes output as an input of the report, or nothing when the run has no route."""
    return [path] if ROUTES else []


rule gate:
    input:
        geometry=per_route(f"{R}/geometry/{{route}}.json"),
        floors=f"{R}/patch/floors.parquet",
        reextract=[f"{R}/reextract.json"] if stored_gold() != f"{R}/gold.parquet" else [],
    output:
        record=f"{R}/gate.json",
    log:
        f"{LOGS}/analysis/gate.log",
    params:
        min_cos=config["gold"]["min_cos"],
        gold_repatch_kl_max=config["patch"]["gold_repatch_kl_max"],
        expected_fve={r: {k: v for k, v in config["routes"][r].items() if k in ("expected_fve", "fve_tolerance")}
                      for r in ROUTES},
        routes=ROUTES,
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/gate.py"


rule report_html:
    input:
        run=f"{R}/run.json",
        gate=f"{R}/gate.json",
        **{name: per_route(f"{R}/tables/{{route}}/{name}.csv") for name in ROUTE_TABLES},
        stats=per_route(f"{R}/stats/{{route}}.json"),
        **{key: per_route(f"{R}/figures/{{route}}/{name}.png") for key, name in FIG_NAMES.items()},
        routes_table=comparison_input(f"{R}/tables/routes.csv"),
        fig_routes=comparison_input(f"{R}/figures/routes_comparison.png"),
        **{f"{key}_all": comparison_input(f"{R}/figures/{name}.png") for key, name in FIG_NAMES.items()},
    output:
        report=report(f"{R}/report.html", caption="../reports/report.rst", category="Report"),
    log:
        f"{LOGS}/report.log",
    params:
        routes=ROUTES,
        reference=SHOW_REF,
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/report_html.py"
