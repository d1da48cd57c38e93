"""Rule run_record (rules/sites.smk): ``results/{run}/run.json``: the resolved config, model, layer, code version and config hash."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.sites import run_record

run_rule(run_record, snakemake)  # noqa: F821
