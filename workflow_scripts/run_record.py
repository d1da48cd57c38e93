"""Rule run_record: results/{run}/run.json (resolved config, model, layer, code version, config hash)."""
from causal_kl.logs import run_script
from causal_kl.stages import stage_run_record

run_script(lambda s: stage_run_record(s.config, s.output.json), snakemake)  # noqa: F821
