# Gold extraction per shard (block-L output at each site), stored golds and the re-extract check.


rule gold:
    input:
        sites=f"{R}/sites/shard_{{shard}}.parquet",
        docs=f"{R}/docs.parquet",
        model_dir=model_input(),
    output:
        gold=f"{R}/gold/shard_{{shard}}.parquet",
    log:
        f"{LOGS}/gold/shard_{{shard}}.log",
    params:
        **model_params(),
    threads: MODEL_THREADS
    resources:
        **model_resources(),
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/gold.py"


rule gold_aggregate:
    input:
        shards=shard_files(f"{R}/gold/shard_{{shard}}.parquet"),
    output:
        gold=f"{R}/gold.parquet",
    log:
        f"{LOGS}/gold_aggregate.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/gold_aggregate.py"


rule demo_base:
    input:
        gold=f"{R}/gold.parquet",
        sites=f"{R}/sites.parquet",
        docs=f"{R}/docs.parquet",
        model_dir=model_input(),
    output:
        base=f"{R}/base.parquet",
    log:
        f"{LOGS}/demo_base.log",
    params:
        layer=LAYER,
        model=MODEL["path"],
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/demo_base.py"


rule stored_gold:
    input:
        base=stored_base(),
        sites=f"{R}/sites.parquet",
        gold=f"{R}/gold.parquet",
    output:
        stored=f"{R}/stored_gold.parquet",
        reextract=f"{R}/reextract.parquet",
        summary=f"{R}/reextract.json",
    log:
        f"{LOGS}/stored_gold.log",
    params:
        min_cos=config["gold"]["min_cos"],
        layer=LAYER,
        stored_fingerprint=external(stored_base()) if config["gold"]["stored"] else None,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/stored_gold.py"
