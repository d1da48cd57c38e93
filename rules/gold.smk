# Gold extraction per layer and shard (block-L output at each site), stored golds and the re-extract check.


rule gold:
    input:
        sites=P.site_shard,
        docs=P.docs,
        model_dir=model_input(),
    output:
        gold=P.gold_shard,
    log:
        f"{LL}/gold/shard_{{shard}}.log",
    params:
        **model_params(),
    threads: MODEL_THREADS
    resources:
        **model_resources(),
    priority: gold_priority
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/gold.py"


rule gold_aggregate:
    input:
        shards=shard_files(P.gold_shard),
    output:
        gold=P.gold,
    log:
        f"{LL}/gold_aggregate.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/gold_aggregate.py"


rule demo_base:
    input:
        gold=P.gold,
        sites=P.sites,
        docs=P.docs,
        model_dir=model_input(),
    output:
        base=P.base,
    log:
        f"{LL}/demo_base.log",
    params:
        model=model_path,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/demo_base.py"


rule stored_gold:
    input:
        base=stored_base,
        sites=P.sites,
        gold=P.gold,
    output:
        stored=P.stored_gold,
        reextract=P.reextract,
        summary=P.reextract_summary,
    log:
        f"{LL}/stored_gold.log",
    params:
        min_cos=config["gold"]["min_cos"],
        stored_fingerprint=lambda w: external(stored_base(w)) if config["gold"]["stored"] else None,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/stored_gold.py"
