"""Figure 1: direction-MSE vs KL@0 (one panel per route given)."""
from causal_kl import analysis_jobs as jobs
from causal_kl.logs import run_script


def main(s):
    i, o, p, w = s.input, s.output, s.params, s.wildcards
    jobs.job_fig1(jobs.named(i, "per_site", w.get("route")), jobs.named(i, "correlation", w.get("route")), o.png, o.svg, p.dpi, **p.style)


run_script(main, snakemake)  # noqa: F821
