# Gold extraction per layer and shard (block-L output at each site), stored golds and the re-extract check.


rule gold:
    input:
        sites=f"{R}/sites/shard_{{shard}}.parquet",
        docs=f"{R}/docs.parquet",
        model_dir=model_input(),
    output:
        gold=f"{RL}/gold/shard_{{shard}}.parquet",
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
        shards=shard_files(f"{RL}/gold/shard_{{shard}}.parquet"),
    output:
        gold=f"{RL}/gold.parquet",
    log:
        f"{LL}/gold_aggregate.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/gold_aggregate.py"


rule demo_base:
    input:
        gold=f"{RL}/gold.parquet",
        sites=f"{R}/sites.parquet",
        docs=f"{R}/docs.parquet",
        model_dir=model_input(),
    output:
        base=f"{RL}/base.parquet",
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
        sites=f"{R}/sites.parquet",
        gold=f"{RL}/gold.parquet",
    output:
        stored=f"{RL}/stored_gold.parquet",
        reextract=f"{RL}/reextract.parquet",
        summary=f"{RL}/reextract.json",
    log:
        f"{LL}/stored_gold.log",
    params:
        min_cos=config["gold"]["min_cos"],
        stored_fingerprint=lambda w: external(stored_base(w)) if config["gold"]["stored"] else None,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/stored_gold.py"
