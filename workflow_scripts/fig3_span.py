"""Rule fig3_span (rules/figures.smk): Figure 3 for a span of k positions: median KL by offset from the span's last position (inside the span shaded)."""
from causal_kl.jobs import run_analysis_rule

run_analysis_rule("causal_kl.jobs.figures:fig3_span", snakemake)  # noqa: F821
