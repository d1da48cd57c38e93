"""Rule stat_paired (rules/statistics.smk): §4: reconstruction vs matched noise per site (median ratio with CI, share worse, Wilcoxon)."""
from causal_kl.jobs import run_analysis_rule

run_analysis_rule("causal_kl.jobs.statistics:stat_paired", snakemake)  # noqa: F821
