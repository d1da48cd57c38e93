# Spans of k > 1 positions (patch.spans): the golds at each span's extra positions p+1 .. p+k-1, the span's resample
# choices and per-position noise directions, and each route's reconstruction there. Sites stay the sampled positions;
# a site whose span would run past its document's end is excluded (counted in span{k}/sites.json). The patch rules
# themselves (rules/patch.smk) serve every span.


rule span_gold:
    wildcard_constraints:
        span=EXTRA_SPAN,
    input:
        sites=P.site_shard,
        docs=P.docs,
        model_dir=model_input(),
    output:
        gold=P.span_gold_shard,
    log:
        f"{LS}/gold/shard_{{shard}}.log",
    params:
        **model_params(),
    threads: MODEL_THREADS
    resources:
        **model_resources(),
    priority: gold_priority
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/span_gold.py"


rule span_gold_aggregate:
    wildcard_constraints:
        span=EXTRA_SPAN,
    input:
        shards=shard_files(P.span_gold_shard),
    output:
        gold=P.span_gold,
    log:
        f"{LS}/gold_aggregate.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/span_gold_aggregate.py"


rule span_conditions:
    wildcard_constraints:
        span=EXTRA_SPAN,
    input:
        gold=stored_gold(),
        sites=P.sites,
        docs=P.docs,
    output:
        choices=P.span_conditions["choices"],
        noise=P.span_conditions["noise"],
        summary=P.span_sites,
    log:
        f"{LS}/conditions.log",
    params:
        seed=config["seed"],
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/span_conditions.py"


rule recon_span:
    wildcard_constraints:
        span=EXTRA_SPAN,
    input:
        span_gold=P.span_gold,
        span_gold_in=transcoder_span_gold,
        sites=P.sites,
        train_gold=train_rows_gold,
        sae=sae_input,
        vectors=route_files,
        explanations=nla_explanations,
        checkpoint=local_checkpoint,
        model_dir=model_input(),
    output:
        recon=P.span_recon,
    log:
        f"{LS}/recon/{{route}}.log",
    params:
        **model_params(),
        route_entry=route_params,
        fingerprints=reconstructor_fingerprints,
        eval_rows=config["corpus"]["rows"],
    resources:
        **model_resources(),
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/recon_span.py"
