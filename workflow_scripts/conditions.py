"""Rule conditions: seeded resample choices, the eval-set mean and the noise directions, recorded."""
from causal_kl.logs import run_script
from causal_kl.stages import stage_conditions

run_script(lambda s: stage_conditions(s.config, s.input.gold, s.input.sites, s.output.choices, s.output.mean,
                                      s.output.noise), snakemake)  # noqa: F821
