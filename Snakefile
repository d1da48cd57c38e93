# causal-kl: splice reconstructions back into a language model and measure what it loses.
# `snakemake --cores 2` runs the demo (config/config.yaml); pass --configfile for another run.
# Map of the house (rule -> script -> job -> domain modules): docs/ARCHITECTURE.md.

configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/demo.smk"
include: "rules/sites.smk"
include: "rules/gold.smk"
include: "rules/recon.smk"
include: "rules/patch.smk"
include: "rules/tables.smk"
include: "rules/statistics.smk"
include: "rules/figures.smk"
include: "rules/report.smk"


rule all:
    input:
        all_targets(),
    default_target: True
