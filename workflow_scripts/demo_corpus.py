"""The demo corpus (rule demo_corpus): Python's own docs packed into documents."""
import logging

from causal_kl.demo.corpus import CorpusConfig, build_corpus

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, force=True,  # noqa: F821
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
build_corpus(snakemake.output.corpus,  # noqa: F821
             CorpusConfig(**snakemake.params.corpus, seed=snakemake.params.seed))  # noqa: F821
