"""Rule whole_context (rules/whole_context.smk): ``kl_div_score`` and ``ce_loss_score`` of one route at one layer, on contexts drawn from the run's documents."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.whole_context import whole_context

run_rule(whole_context, snakemake)  # noqa: F821
