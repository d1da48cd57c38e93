# causal-kl: splice reconstructions back into a language model and measure what it loses.
# `snakemake --cores 2` runs the demo (config/config.yaml); `--configfile X` runs X and nothing else
# (rules/common.smk resolves which config a run uses). Map of the house: docs/ARCHITECTURE.md.


include: "rules/common.smk"
include: "rules/demo.smk"
include: "rules/sites.smk"
include: "rules/gold.smk"
include: "rules/recon.smk"
include: "rules/spans.smk"
include: "rules/patch.smk"
include: "rules/whole_context.smk"
include: "rules/tables.smk"
include: "rules/statistics.smk"
include: "rules/figures.smk"
include: "rules/report.smk"


# each model rule's cluster group, from the one table of model rules (causal_kl.model_rules); none locally
declare_model_groups(workflow, CLUSTER_GROUPS, SHARDS_PER_ALLOCATION)


onstart:
    plan_work_ahead(workflow, config, CLUSTER_GROUPS)
    preload_run_model(workflow, config, MODEL_BLOCK, CLUSTER_GROUPS)
    start_analysis_server(workflow, config, CLUSTER_GROUPS)


onsuccess:
    stop_model_servers()
    remove_work_ahead_plan()
    stop_analysis_server()


onerror:
    stop_model_servers()
    remove_work_ahead_plan()
    stop_analysis_server()


rule all:
    default_target: True
    input:
        run_targets(),
        shard_targets,
