"""The demo tokenizer (rule demo_tokenizer): a byte-level BPE trained on the model-training rows."""
import logging

from causal_kl.demo.tokenizer import build_tokenizer

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, force=True,  # noqa: F821
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
build_tokenizer(snakemake.input.corpus, snakemake.output.tokenizer,  # noqa: F821
                vocab_size=snakemake.params.tokenizer["vocab_size"],  # noqa: F821
                train_rows=(snakemake.params.data["train_start"], None),  # noqa: F821
                column=snakemake.params.column)  # noqa: F821
