"""Rule fig3_span (rules/figures.smk): Figure 3 for a span of k positions: median KL by offset from the span's last position (inside the span shaded)."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.figures import fig3_span

run_rule(fig3_span, snakemake)  # noqa: F821
