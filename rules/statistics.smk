# The write-up's statistics: one JSON record per statistic of a route (each its own target), then the route's
# merged record with its headline numbers.


rule stat_correlation:
    input:
        per_site=f"{RL}/analysis/{{route}}/per_site.parquet",
    output:
        record=f"{RL}/stats/{{route}}/correlation.json",
    log:
        f"{LL}/analysis/{{route}}/stat_correlation.log",
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/stat_correlation.py"


rule stat_paired:
    input:
        per_site=f"{RL}/analysis/{{route}}/per_site.parquet",
    output:
        record=f"{RL}/stats/{{route}}/paired.json",
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
        per_site=f"{RL}/analysis/{{route}}/per_site.parquet",
    output:
        record=f"{RL}/stats/{{route}}/energy.json",
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
        offsets=f"{RL}/tables/{{route}}/offsets.csv",
    output:
        record=f"{RL}/stats/{{route}}/floor_offsets.json",
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
        **{name: f"{RL}/stats/{{route}}/{name}.json" for name in STATS},
        conditions=f"{RL}/tables/{{route}}/conditions.csv",
        geometry_json=f"{RL}/geometry/{{route}}.json",
    output:
        record=f"{RL}/stats/{{route}}.json",
    log:
        f"{LL}/analysis/{{route}}/stats.log",
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow_scripts/stats_route.py"
