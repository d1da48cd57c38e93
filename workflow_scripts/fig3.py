"""Figure 3: median KL by offset."""
from causal_kl import analysis_jobs as jobs
from causal_kl.logs import run_script


def main(s):
    i, o, p, w = s.input, s.output, s.params, s.wildcards
    jobs.job_fig3(jobs.named(i, "offsets", w.get("route")), o.png, o.svg, p.dpi, **p.style)


run_script(main, snakemake)  # noqa: F821
