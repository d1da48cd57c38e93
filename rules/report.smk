# The report: one self-contained HTML file per run (figures embedded), built from the analysis
# outputs only. `snakemake --report report.zip` additionally collects every figure and table
# wrapped in report(...) with its caption from reports/*.rst.


report: "../reports/workflow.rst"


def report_route_files(route):
    """The analysis outputs one route's report section shows."""
    files = {name: f"{R}/tables/{route}/{name}.csv" for name in ROUTE_TABLES}
    files["stats"] = f"{R}/stats/{route}.json"
    files.update({k: f"{R}/figures/{route}/{v}.png" for k, v in FIG_NAMES.items()})
    return files


def report_comparison_files():
    if not ROUTES:
        return {}
    files = {k: f"{R}/figures/{v}.png" for k, v in FIG_NAMES.items()}
    files["fig_routes"] = f"{R}/figures/routes_comparison.png"
    files["routes"] = f"{R}/tables/routes.csv"
    return files


def report_inputs(wildcards):
    paths = {"run": f"{R}/run.json", "gate": f"{R}/gate.json"}
    for r in ROUTES:
        paths.update({f"{k}_{r}": v for k, v in report_route_files(r).items()})
    paths.update({f"comparison_{k}": v for k, v in report_comparison_files().items()})
    return paths


rule report_html:
    input:
        unpack(report_inputs),
    output:
        report(f"{R}/report.html", caption="../reports/report.rst", category="Report"),
    log:
        f"{LOGS}/report.log",
    params:
        routes={r: report_route_files(r) for r in ROUTES},
        comparison=report_comparison_files(),
        reference=SHOW_REF,
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/report_html.py"
