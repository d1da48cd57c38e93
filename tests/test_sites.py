"""Site sampling against an independent re-implementation of NLA stage 0; corpus bad input."""
import hashlib
import random

import pandas as pd
import pytest

from causal_kl.errors import CausalKLError
from causal_kl.sites import build_sites, load_corpus_rows, sample_sites


def stage0_reference(docs, special, seed, k, min_pos, cap):
    """Written from the rule's text alone: rng per doc from sha256(f"{seed}|{doc_id}"), rng.sample."""
    out = []
    for doc_id, ids in docs:
        cands = [p for p in range(len(ids)) if p >= min_pos and ids[p] not in special]
        if not cands:
            continue
        rng = random.Random(hashlib.sha256(f"{seed}|{doc_id}".encode()).digest())
        for p in rng.sample(cands, k=min(k, len(cands))):
            out.append((doc_id, p))
    return out[:cap]


def test_sampling_matches_reference():
    rnd = random.Random(5)
    docs = []
    for r in range(12):
        n = rnd.choice([10, 55, 60, 200, 400])  # some docs too short for a candidate
        ids = [2] + [rnd.randrange(3, 300) for _ in range(n - 1)]
        if r == 3:
            ids[50:60] = [1] * 10  # special tokens are never sites
        docs.append((f"corp/x:train:{100 + r}", ids))
    special = {0, 1, 2}
    s = sample_sites([d for d, _ in docs], list(range(100, 112)), [i for _, i in docs], special, 42, 10, 50, 73, 20)
    got = list(zip(s.sites["doc_id"].to_pylist(), s.sites["position"].to_pylist()))
    assert got == stage0_reference(docs, special, 42, 10, 50, 73)
    assert s.sites["site_id"].to_pylist() == list(range(len(got)))
    assert s.sites["shard"].to_pylist() == [i // 20 for i in range(len(got))]
    ids_of = dict(docs)
    for doc, p, tok, nxt in zip(*(s.sites[c].to_pylist() for c in ("doc_id", "position", "token_id", "next_token_id"))):
        assert tok == ids_of[doc][p]
        assert nxt == (ids_of[doc][p + 1] if p + 1 < len(ids_of[doc]) else -1)
    # docs keep every token of the (truncated) document: offset 31 after a span of any length has its true next token
    for doc, kept, n in zip(s.docs["doc_id"].to_pylist(), s.docs["input_ids"].to_pylist(), s.docs["n_tokens"].to_pylist()):
        assert kept == list(ids_of[doc]) and n == len(ids_of[doc])


def test_short_documents_are_counted():
    s = sample_sites(["a", "b"], [0, 1], [[2] * 10, [2] + list(range(3, 80))], {2}, 1, 10, 50, 100, 100)
    assert s.stats["docs_without_candidates"] == 1 and s.stats["n_docs"] == 1


def _cfg(path, rows=(0, 10), column="content"):
    return {"corpus": {"name": "local/c", "path": str(path), "split": "train", "column": column, "rows": list(rows)},
            "sites": {"positions_per_doc": 10, "min_position": 50, "max_length": 512, "max_sites": 40, "shard_size": 10},
            "seed": 42}


def test_corpus_rows_of_a_local_parquet(corpus_path):
    rows = load_corpus_rows(_cfg(corpus_path, (3, 7))["corpus"])
    df = pd.read_parquet(corpus_path)
    assert rows == [(r, df["content"][r]) for r in range(3, 7)]


def test_corpus_bad_column_and_rows(corpus_path):
    with pytest.raises(CausalKLError, match=r"corpus.column: column 'text' not in the corpus .*Fix: set corpus.column"):
        load_corpus_rows(_cfg(corpus_path, column="text")["corpus"])
    with pytest.raises(CausalKLError, match=r"corpus.rows: rows \[25, 40\) run past the end of the corpus \(30 rows\)"):
        load_corpus_rows(_cfg(corpus_path, (25, 40))["corpus"])
    # a start past the end: the fix names the corpus' own length (pyarrow's count), not the start
    n = len(pd.read_parquet(corpus_path))
    with pytest.raises(CausalKLError, match=rf"rows \[{n + 5}, {n + 9}\) start past the end of the corpus \({n} rows\)"
                       rf".*Fix: set corpus.rows within \[0, {n}\]"):
        load_corpus_rows(_cfg(corpus_path, (n + 5, n + 9))["corpus"])
    with pytest.raises(CausalKLError, match="corpus file not found"):
        load_corpus_rows(_cfg(corpus_path.parent / "nope.parquet")["corpus"])


def test_build_sites_tokenizes_with_bos(corpus_path, gemma3_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gemma3_dir)
    cfg = _cfg(corpus_path)
    s = build_sites(cfg["corpus"], cfg["sites"], cfg["seed"], tok)
    assert s.sites.num_rows == 40
    first = s.docs["input_ids"].to_pylist()[0]
    assert first[0] == tok.bos_token_id
    text = pd.read_parquet(corpus_path)["content"][0]
    assert first == tok(text, add_special_tokens=True).input_ids[: len(first)]
    assert s.docs["doc_id"].to_pylist()[0] == "local/c:train:0"
    sites = s.sites.to_pandas()
    assert (sites["token"] == sites["token_id"].map(lambda t: tok.decode([t]))).all()  # the token text of each site
