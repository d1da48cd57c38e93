"""The floor-check gate of the run."""
from causal_kl import analysis_jobs as jobs
from causal_kl.logs import run_script


def main(s):
    i, o = s.input, s.output
    jobs.job_gate(i.patch, i.get("reextract"), jobs.named(i, "geometry"), s.config, o[0])


run_script(main, snakemake)  # noqa: F821
