# Reconstruction routes, per layer: one rule per route kind writing RL/recon/{route}.parquet, then the geometry of
# every route. Each route-kind rule only matches the routes of its kind (wildcard constraint), so adding a route
# to the config adds only that route's jobs; a route reconstructs the layers its `layer` names (default: all).
SAMPLING = {"seed": config["seed"], "sampling": config["sites"], "corpus": config["corpus"]}
"""How route-training documents are sampled: exactly like the eval sites."""


rule train_gold:
    wildcard_constraints:
        start=r"\d+",
        stop=r"\d+",
    input:
        corpus_file=corpus_input(),
        model_dir=model_input(),
    output:
        gold=P.train_gold,
    log:
        f"{LL}/train_gold/rows_{{start}}_{{stop}}.log",
    params:
        **SAMPLING,
        **model_params(),
        rows=lambda w: [int(w.start), int(w.stop)],
    resources:
        **model_resources(),
    priority: lambda w: parse_point(w.layer).layer
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/train_gold.py"


rule recon_file:
    wildcard_constraints:
        route=route_regex("file"),
    input:
        vectors=route_files,
        sites=P.sites,
        gold=stored_gold(),
    output:
        recon=P.recon,
    log:
        f"{LL}/recon/{{route}}.log",
    params:
        route_entry=route_params,
        source_fingerprint=lambda w: [external(f) for f in route_files(w)],
    resources:
        mem_mb=mem_mb(4000),
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/recon_file.py"


rule recon_pca:
    wildcard_constraints:
        route=route_regex("pca"),
    input:
        train_gold=train_rows_gold,
        sites=P.sites,
        gold=stored_gold(),
    output:
        recon=P.recon,
    log:
        f"{LL}/recon/{{route}}.log",
    params:
        route_entry=route_params,
        eval_rows=config["corpus"]["rows"],
    resources:
        mem_mb=mem_mb(4000),
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/recon_pca.py"


rule recon_text_channel:
    wildcard_constraints:
        route=route_regex("text_channel"),
    input:
        train_gold=train_rows_gold,
        sites=P.sites,
        gold=stored_gold(),
        model_dir=model_input(),
    output:
        recon=P.recon,
        explanations=P.explanations,
    log:
        f"{LL}/recon/{{route}}.log",
    params:
        **model_params(),
        route_entry=route_params,
        eval_rows=config["corpus"]["rows"],
    resources:
        **model_resources(),
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/recon_text_channel.py"


rule recon_sae:
    wildcard_constraints:
        route=route_regex("sae"),
    input:
        sae=sae_input,
        sites=P.sites,
        gold=stored_gold(),
        gold_in=transcoder_gold,
    output:
        recon=P.recon,
        sparsity=P.sae,
    log:
        f"{LL}/recon/{{route}}.log",
    params:
        route_entry=route_params,
        sae_fingerprint=sae_fingerprint,
        device=config["device"],
    resources:
        **model_resources(),
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/recon_sae.py"


rule explain_nla_av:
    wildcard_constraints:
        route=route_regex("nla_av"),
    input:
        sites=P.sites,
        gold=stored_gold(),
        checkpoint=lambda w: [p for p in [route_config(w)["checkpoint"]] if Path(p).exists()],
    output:
        explanations=P.explanations,
    log:
        f"{LL}/explanations/{{route}}.log",
    params:
        route_entry=route_params,
        checkpoint_fingerprint=lambda w: external(route_config(w)["checkpoint"]),
        dtype=config["dtype"],
        device=config["device"],
        seed=config["seed"],
    resources:
        **model_resources(),
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/explain_nla_av.py"


rule recon_nla_ar:
    wildcard_constraints:
        route=route_regex("nla_ar", "nla_av"),
    input:
        explanations=nla_explanations,
        sites=P.sites,
        gold=stored_gold(),
        checkpoint=local_checkpoint,
    output:
        recon=P.recon,
    log:
        f"{LL}/recon/{{route}}.log",
    params:
        route_entry=route_params,
        checkpoint_fingerprint=lambda w: external(checkpoint_path(w)),
        explanations_fingerprint=lambda w: (
            None if route_config(w)["kind"] == "nla_av" else external(nla_explanations(w)[0])
        ),
        dtype=config["dtype"],
        device=config["device"],
    resources:
        **model_resources(),
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/recon_nla_ar.py"


rule geometry:
    input:
        recon=P.recon,
        gold=stored_gold(),
        sites=P.sites,
    output:
        table=P.geometry,
        summary=P.geometry_summary,
    log:
        f"{LL}/geometry/{{route}}.log",
    params:
        route_entry=lambda w: {k: v for k, v in route_config(w).items() if k != "layer"},
        variance_constant=config["geometry"]["variance_constant"],
    resources:
        mem_mb=mem_mb(4000),
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/geometry.py"
