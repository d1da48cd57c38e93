# SAELens-comparable scores per route and layer: the reconstruction spliced at every position of n_ctx-token contexts
# packed from the run's documents at once, against zero ablation (kl_div_score, ce_loss_score as sae_lens/evals.py
# defines them). Routes that cannot reconstruct any vector (NLA, files) are recorded as skipped, with the reason.


rule whole_context:
    input:
        docs=P.docs,
        train_gold=train_rows_gold,
        sae=sae_input,
        vectors=route_files,
        explanations=nla_explanations,
        checkpoint=local_checkpoint,
        model_dir=model_input(),
    output:
        scores=P.whole_context,
    log:
        f"{LL}/whole_context/{{route}}.log",
    params:
        **model_params(),
        route_entry=route_params,
        fingerprints=reconstructor_fingerprints,
        settings={k: v for k, v in config["whole_context"].items() if k != "enabled"},
        seed=config["seed"],
    threads: MODEL_THREADS
    resources:
        **model_resources(),
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/whole_context.py"
