# Conditions (seeded choices, recorded) and the patch engine per layer and span: floors once per run, routes per
# route. Every span has the same rules; a span of 1 (the single-site splice) reads only the site files, a longer
# span also its extra positions' golds, choices, noise and reconstructions (rules/spans.smk).


rule conditions:
    input:
        gold=stored_gold(),
        sites=P.sites,
    output:
        choices=P.conditions["choices"],
        mean=P.conditions["mean"],
        noise=P.conditions["noise"],
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
        sites=P.site_shard,
        docs=P.docs,
        gold=stored_gold(),
        choices=span_choices,
        mean=P.conditions["mean"],
        span_gold=span_file(P.span_gold),
        model_dir=model_input(),
    output:
        floors=P.floors_shard,
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
        sites=P.site_shard,
        docs=P.docs,
        gold=stored_gold(),
        recon=P.recon,
        noise=P.conditions["noise"],
        span_gold=span_file(P.span_gold),
        span_recon=span_file(P.span_recon),
        span_noise=span_file(P.span_conditions["noise"]),
        model_dir=model_input(),
    output:
        patched=P.patch_shard,
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
        shards=shard_files(P.floors_shard),
    output:
        patch=P.floors,
    log:
        f"{LS}/patch/floors_aggregate.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/patch_floors_aggregate.py"


rule patch_route_aggregate:
    input:
        shards=shard_files(P.patch_shard),
    output:
        patch=P.patch,
    log:
        f"{LS}/patch/{{route}}_aggregate.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/patch_route_aggregate.py"


rule patch_aggregate:
    input:
        floors=lambda w: expand(P.floors, layer=w.layer, span=spans_at(w.layer)),
        routes=lambda w: [
            fill(P.patch, layer=w.layer, span=k, route=r)
            for k in spans_at(w.layer)
            for r in routes_of(w.layer)
            if k in spans_of(r)
        ],
    output:
        index=P.patch_index,
    log:
        f"{LL}/patch_aggregate.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/patch_aggregate.py"
