# Gold extraction per shard (block-L output at each site), stored golds and the re-extract check.


rule gold:
    input:
        sites=f"{R}/sites/shard_{{shard}}.parquet",
        docs=f"{R}/docs.parquet",
        model=model_input(),
    output:
        f"{R}/gold/shard_{{shard}}.parquet",
    log:
        f"{LOGS}/gold/shard_{{shard}}.log",
    params:
        model=config["model"],
        dtype=config["dtype"],
        device=config["device"],
    threads: 2
    resources:
        gpu=gpu_count(),
        mem_mb=mem_mb(8000),
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/gold.py"


rule gold_aggregate:
    input:
        expand(f"{R}/gold/shard_{{shard}}.parquet", shard=SHARDS),
    output:
        f"{R}/gold.parquet",
    log:
        f"{LOGS}/gold_aggregate.log",
    params:
        contract="gold",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/concat.py"


rule demo_base:
    input:
        gold=f"{R}/gold.parquet",
        sites=f"{R}/sites.parquet",
        docs=f"{R}/docs.parquet",
        model=model_input(),
    output:
        f"{R}/base.parquet",
    log:
        f"{LOGS}/demo_base.log",
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
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/stored_gold.py"
