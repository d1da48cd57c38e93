# Conditions (seeded choices, recorded) and the patch engine: floors once per run, routes per route.


rule conditions:
    input:
        gold=stored_gold(),
        sites=f"{R}/sites.parquet",
    output:
        choices=f"{R}/conditions/choices.parquet",
        mean=f"{R}/conditions/mean.parquet",
        noise=f"{R}/conditions/noise.parquet",
    log:
        f"{LOGS}/conditions.log",
    params:
        seed=config["seed"],
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/conditions.py"


rule patch_floors:
    input:
        sites=f"{R}/sites/shard_{{shard}}.parquet",
        docs=f"{R}/docs.parquet",
        gold=stored_gold(),
        choices=f"{R}/conditions/choices.parquet",
        mean=f"{R}/conditions/mean.parquet",
        model_dir=model_input(),
    output:
        floors=f"{R}/patch/floors/shard_{{shard}}.parquet",
    log:
        f"{LOGS}/patch/floors/shard_{{shard}}.log",
    params:
        **model_params(),
        patch=config["patch"],
    threads: MODEL_THREADS
    resources:
        **model_resources(),
    priority: shard_priority
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/patch_floors.py"


rule patch_route:
    input:
        sites=f"{R}/sites/shard_{{shard}}.parquet",
        docs=f"{R}/docs.parquet",
        gold=stored_gold(),
        recon=f"{R}/recon/{{route}}.parquet",
        noise=f"{R}/conditions/noise.parquet",
        model_dir=model_input(),
    output:
        patched=f"{R}/patch/{{route}}/shard_{{shard}}.parquet",
    log:
        f"{LOGS}/patch/{{route}}/shard_{{shard}}.log",
    params:
        **model_params(),
        patch=config["patch"],
        seed=config["seed"],
    threads: MODEL_THREADS
    resources:
        **model_resources(),
    priority: shard_priority
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/patch_route.py"


rule patch_floors_aggregate:
    input:
        shards=shard_files(f"{R}/patch/floors/shard_{{shard}}.parquet"),
    output:
        patch=f"{R}/patch/floors.parquet",
    log:
        f"{LOGS}/patch/floors_aggregate.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/patch_floors_aggregate.py"


rule patch_route_aggregate:
    input:
        shards=shard_files(f"{R}/patch/{{route}}/shard_{{shard}}.parquet"),
    output:
        patch=f"{R}/patch/{{route}}.parquet",
    log:
        f"{LOGS}/patch/{{route}}_aggregate.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/patch_route_aggregate.py"


rule patch_aggregate:
    input:
        floors=f"{R}/patch/floors.parquet",
        routes=per_route(f"{R}/patch/{{route}}.parquet"),
    output:
        patch=f"{R}/patch.parquet",
    log:
        f"{LOGS}/patch_aggregate.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/patch_aggregate.py"
