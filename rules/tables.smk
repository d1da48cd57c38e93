# The per-site tables every analysis starts from, and the write-up's tables (each its own target).
# Inputs are the patch/geometry/gold files; nothing here reruns patching.


rule error_norms:
    input:
        gold=stored_gold(),
        choices=f"{R}/conditions/choices.parquet",
        mean=f"{R}/conditions/mean.parquet",
    output:
        norms=f"{R}/analysis/error_norms.parquet",
    log:
        f"{LOGS}/analysis/error_norms.log",
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/error_norms.py"


rule per_site:
    input:
        floors=f"{R}/patch/floors.parquet",
        patch=f"{R}/patch/{{route}}.parquet",
        geometry=f"{R}/geometry/{{route}}.parquet",
        error_norms=f"{R}/analysis/error_norms.parquet",
        sites=f"{R}/sites.parquet",
    output:
        table=f"{R}/analysis/{{route}}/per_site.parquet",
    log:
        f"{LOGS}/analysis/{{route}}/per_site.log",
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/per_site.py"


rule table_conditions:
    input:
        per_site=f"{R}/analysis/{{route}}/per_site.parquet",
        reference=reference_input("conditions"),
    output:
        table=report(f"{R}/tables/{{route}}/conditions.csv", caption="../reports/conditions.rst",
                     category="Tables", subcategory="{route}"),
    log:
        f"{LOGS}/analysis/{{route}}/table_conditions.log",
    params:
        **BOOTSTRAP,
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/table_conditions.py"


rule table_quartiles:
    input:
        per_site=f"{R}/analysis/{{route}}/per_site.parquet",
        geometry_json=f"{R}/geometry/{{route}}.json",
        gold=stored_gold(),
        reference=reference_input("quartiles"),
    output:
        table=report(f"{R}/tables/{{route}}/quartiles.csv", caption="../reports/quartiles.rst",
                     category="Tables", subcategory="{route}"),
    log:
        f"{LOGS}/analysis/{{route}}/table_quartiles.log",
    params:
        **BOOTSTRAP,
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/table_quartiles.py"


rule table_offsets:
    input:
        floors=f"{R}/patch/floors.parquet",
        patch=f"{R}/patch/{{route}}.parquet",
        reference=reference_input("offsets"),
    output:
        table=report(f"{R}/tables/{{route}}/offsets.csv", caption="../reports/offsets.rst",
                     category="Tables", subcategory="{route}"),
    log:
        f"{LOGS}/analysis/{{route}}/table_offsets.log",
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/table_offsets.py"


rule table_token_classes:
    input:
        per_site=f"{R}/analysis/{{route}}/per_site.parquet",
        geometry_json=f"{R}/geometry/{{route}}.json",
        reference=reference_input("token_classes"),
    output:
        table=report(f"{R}/tables/{{route}}/token_classes.csv", caption="../reports/token_classes.rst",
                     category="Tables", subcategory="{route}"),
    log:
        f"{LOGS}/analysis/{{route}}/table_token_classes.log",
    params:
        classes=AN["token_classes"],
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/table_token_classes.py"


rule table_routes:
    input:
        conditions=per_route(f"{R}/tables/{{route}}/conditions.csv"),
        geometry=per_route(f"{R}/geometry/{{route}}.json"),
    output:
        table=report(f"{R}/tables/routes.csv", caption="../reports/routes.rst", category="Tables",
                     subcategory="all routes"),
    log:
        f"{LOGS}/analysis/table_routes.log",
    params:
        routes=ROUTES,
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/table_routes.py"
