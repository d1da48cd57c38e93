"""Multi-route comparison figure."""
from causal_kl import analysis_jobs as jobs
from causal_kl.logs import run_script


def main(s):
    i, o, p = s.input, s.output, s.params
    jobs.job_fig_routes(i.routes, o.png, o.svg, p.dpi, **p.style)


run_script(main, snakemake)  # noqa: F821
