"""Token-class table of one route."""
from causal_kl import analysis_jobs as jobs
from causal_kl.logs import run_script


def main(s):
    i, o, p = s.input, s.output, s.params
    jobs.job_token_classes(i.per_site, p.model, p.classes, o[0], p.reference, i.geometry_json)


run_script(main, snakemake)  # noqa: F821
