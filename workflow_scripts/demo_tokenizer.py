"""The demo tokenizer (rule demo_tokenizer): a byte-level BPE trained on the model-training rows."""
from causal_kl.demo.tokenizer import build_tokenizer
from causal_kl.logs import run_script


def main(s):
    build_tokenizer(s.input.corpus, s.output.tokenizer, vocab_size=s.params.tokenizer["vocab_size"],
                    train_rows=(s.params.data["train_start"], None), column=s.params.column)


run_script(main, snakemake)  # noqa: F821
