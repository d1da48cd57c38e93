"""The demo corpus (rule demo_corpus): Python's own docs packed into documents."""
from causal_kl.demo.corpus import CorpusConfig, build_corpus
from causal_kl.logs import run_script


def main(s):
    build_corpus(s.output.corpus, CorpusConfig(**s.params.corpus, seed=s.params.seed))


run_script(main, snakemake)  # noqa: F821
