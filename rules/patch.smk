# Conditions (seeded choices, recorded) and the patch engine per layer and span: floors once per run, routes per
# route. Every span has the same rules; a span of 1 (the single-site splice) reads only the site files, a longer
# span also its extra positions' golds, choices, noise and reconstructions (rules/spans.smk).


rule conditions:
    input:
        gold=stored_gold(),
        sites=f"{R}/sites.parquet",
    output:
        choices=f"{RL}/conditions/choices.parquet",
        mean=f"{RL}/conditions/mean.parquet",
        noise=f"{RL}/conditions/noise.parquet",
    log:
        f"{LL}/conditions.log",
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
        choices=span_choices,
        mean=f"{RL}/conditions/mean.parquet",
        span_gold=span_file(f"{RS}/gold.parquet"),
        model_dir=model_input(),
    output:
        floors=f"{RS}/patch/floors/shard_{{shard}}.parquet",
    log:
        f"{LS}/patch/floors/shard_{{shard}}.log",
    params:
        **model_params(),
        patch=PATCH_PARAMS,
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
        recon=f"{RL}/recon/{{route}}.parquet",
        noise=f"{RL}/conditions/noise.parquet",
        span_gold=span_file(f"{RS}/gold.parquet"),
        span_recon=span_file(f"{RS}/recon/{{route}}.parquet"),
        span_noise=span_file(f"{RS}/conditions/noise.parquet"),
        model_dir=model_input(),
    output:
        patched=f"{RS}/patch/{{route}}/shard_{{shard}}.parquet",
    log:
        f"{LS}/patch/{{route}}/shard_{{shard}}.log",
    params:
        **model_params(),
        patch=PATCH_PARAMS,
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
        shards=shard_files(f"{RS}/patch/floors/shard_{{shard}}.parquet"),
    output:
        patch=f"{RS}/patch/floors.parquet",
    log:
        f"{LS}/patch/floors_aggregate.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/patch_floors_aggregate.py"


rule patch_route_aggregate:
    input:
        shards=shard_files(f"{RS}/patch/{{route}}/shard_{{shard}}.parquet"),
    output:
        patch=f"{RS}/patch/{{route}}.parquet",
    log:
        f"{LS}/patch/{{route}}_aggregate.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/patch_route_aggregate.py"


rule patch_aggregate:
    input:
        floors=lambda w: expand(f"{R}/L{w.layer}/span{{span}}/patch/floors.parquet", span=spans_at(w.layer)),
        routes=lambda w: [
            f"{R}/L{w.layer}/span{k}/patch/{r}.parquet"
            for k in spans_at(w.layer)
            for r in routes_of(w.layer)
            if k in spans_of(r)
        ],
    output:
        index=f"{RL}/patch.json",
    log:
        f"{LL}/patch_aggregate.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/patch_aggregate.py"
