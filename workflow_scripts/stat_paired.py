"""Rule stat_paired (rules/statistics.smk): §4: reconstruction vs matched noise per site (median ratio with CI, share worse, Wilcoxon)."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.statistics import stat_paired

run_rule(stat_paired, snakemake)  # noqa: F821
