# Corpus slicing and NLA stage-0 site sampling; the run record. `sites` is a checkpoint: the shards it
# writes (100 sites each, only those that hold sites) decide which shard jobs the rest of the DAG plans.


rule run_record:
    output:
        json=P.run_record,
    log:
        f"{LOGS}/run_record.log",
    params:
        config=run_identity(config),
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/run_record.py"


checkpoint sites:
    input:
        corpus_file=corpus_input(),
        model_dir=model_input(),
    output:
        docs=P.docs,
        sites=P.sites,
        shards=directory(P.site_shards),
        stats=P.sites_stats,
    log:
        f"{LOGS}/sites.log",
    params:
        corpus=config["corpus"],
        corpus_fingerprint=external(config["corpus"]["path"]) if config["corpus"].get("path") else None,
        sampling=config["sites"],
        seed=config["seed"],
        model=model_path,
    threads: 1
    resources:
        mem_mb=mem_mb(4000),
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/sites.py"
