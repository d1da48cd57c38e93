"""The self-contained HTML report of the run."""
from causal_kl.logs import run_script


def main(s):
    i, o, p = s.input, s.output, s.params
    from causal_kl.report import build_report
    build_report(i.run, i.gate, p.routes, p.comparison, o[0], reference=p.reference)


run_script(main, snakemake)  # noqa: F821
