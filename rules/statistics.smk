# The write-up's statistics: one JSON record per statistic of a route (each its own target), then the route's
# merged record with its headline numbers.


rule stat_correlation:
    input:
        per_site=P.per_site,
    output:
        record=P.route_stats["correlation"],
    log:
        f"{LL}/analysis/{{route}}/stat_correlation.log",
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/stat_correlation.py"


rule stat_paired:
    input:
        per_site=P.per_site,
    output:
        record=P.route_stats["paired"],
    log:
        f"{LL}/analysis/{{route}}/stat_paired.log",
    params:
        **BOOTSTRAP,
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/stat_paired.py"


rule stat_energy:
    input:
        per_site=P.per_site,
    output:
        record=P.route_stats["energy"],
    log:
        f"{LL}/analysis/{{route}}/stat_energy.log",
    params:
        **BOOTSTRAP,
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/stat_energy.py"


rule stat_floor_offsets:
    input:
        offsets=P.route_tables["offsets"],
    output:
        record=P.route_stats["floor_offsets"],
    log:
        f"{LL}/analysis/{{route}}/stat_floor_offsets.log",
    params:
        tolerance=AN["floor_tolerance"],
        min_kl=AN["floor_min_kl"],
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/stat_floor_offsets.py"


rule stats_route:
    input:
        **P.route_stats,
        conditions=P.route_tables["conditions"],
        geometry_json=P.geometry_summary,
    output:
        record=P.route_record,
    log:
        f"{LL}/analysis/{{route}}/stats.log",
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/stats_route.py"
