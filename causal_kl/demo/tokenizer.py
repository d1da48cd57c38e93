"""The demo tokenizer: a byte-level BPE trained on the corpus's model-training rows.

Special tokens are laid out like Gemma's (``<pad>``=0, ``<eos>``=1, ``<bos>``=2, ``<unk>``=3)
and the post-processor prepends ``<bos>``, so ``tokenizer(text)`` (with special tokens)
starts with BOS exactly as Gemma's tokenizer does. Saved with ``save_pretrained`` as a
``PreTrainedTokenizerFast``, so ``AutoTokenizer.from_pretrained`` loads it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from causal_kl.errors import CausalKLError

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>")
"""In id order: pad=0, eos=1, bos=2, unk=3 (Gemma's layout)."""


def train_tokenizer(texts: Sequence[str], vocab_size: int):
    """Train a byte-level BPE on ``texts``; returns a ``PreTrainedTokenizerFast`` that prepends ``<bos>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(SPECIAL_TOKENS):
        raise CausalKLError("config", "demo.tokenizer.vocab_size", f"{vocab_size} is below the byte alphabet + specials "
                            f"({len(alphabet) + len(SPECIAL_TOKENS)})", "use a vocab_size of at least 512")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(list(texts), trainer)
    ids = {s: tok.token_to_id(s) for s in SPECIAL_TOKENS}
    if [ids[s] for s in SPECIAL_TOKENS] != list(range(len(SPECIAL_TOKENS))):
        raise RuntimeError(f"special token ids {ids} are not Gemma's layout")  # tokenizers guarantees this order
    bos = ids["<bos>"]
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>", model_max_length=1_000_000)


def read_rows(corpus: str | Path, rows: tuple[int, int | None], column: str = "content") -> list[str]:
    """Rows ``[start, stop)`` of the corpus parquet's ``column`` (stop None = to the end)."""
    from causal_kl.io import read_parquet

    table = read_parquet(corpus)
    if column not in table.column_names:
        raise CausalKLError(corpus, column, f"column missing (has {table.column_names})",
                            "rebuild the demo corpus or set corpus.column")
    start, stop = rows
    stop = table.num_rows if stop is None else stop
    if not 0 <= start < stop <= table.num_rows:
        raise CausalKLError(corpus, "rows", f"rows [{start}, {stop}) are outside the corpus's {table.num_rows} rows",
                            "lower the demo row ranges or lower demo.corpus.target_chars for more documents")
    return table.column(column).slice(start, stop - start).to_pylist()


def build_tokenizer(corpus: str | Path, out: str | Path, vocab_size: int,
                    train_rows: tuple[int, int | None] = (250, None), column: str = "content") -> int:
    """Train the tokenizer on rows ``train_rows`` of the corpus and ``save_pretrained`` it to ``out``; return its size."""
    from causal_kl.demo import atomic_dir

    texts = read_rows(corpus, train_rows, column)
    tokenizer = train_tokenizer(texts, vocab_size)
    with atomic_dir(out) as tmp:
        tokenizer.save_pretrained(tmp)
    log.info("demo tokenizer: %d tokens, trained on %d documents -> %s", len(tokenizer), len(texts), out)
    return len(tokenizer)
