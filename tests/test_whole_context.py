"""causal_kl.whole_context against an independent computation, and against SAELens itself.

The reference here loads the checkpoint with transformers directly, runs one context at a time
with a forward hook on the decoder block, and loops over positions with scipy (float64). The
peer check runs SAELens' own ``run_evals`` (through TransformerLens' ``TransformerBridge`` on the
same local checkpoint, offline) on the same SAE files and token contexts; it needs
``pip install -e '.[sae]'`` and is skipped without it.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch

import fixtures
from causal_kl.demo.sae import SAETrainConfig, train_topk_sae
from causal_kl.models import load_model
from causal_kl.sae import explained_variance, save_sae
from causal_kl.whole_context import draw_contexts, pack_contexts, special_token_ids, whole_context_scores

N_CTX, N_CONTEXTS = 32, 6
LAYERS = {"gemma3": 2, "llama": 1}


@pytest.fixture(scope="module", params=["gemma3", "llama"])
def case(request, tmp_path_factory):
    """A tiny model, contexts with BOS/EOS/PAD inside them, and an SAE trained on its layer-L states."""
    name = request.param
    model_dir = request.getfixturevalue(f"{name}_dir")
    loaded = load_model(model_dir)
    tok = loaded.tokenizer
    docs = [tok(t)["input_ids"] for t in fixtures.make_texts(10, (40, 90), seed=3)]
    contexts = draw_contexts(docs, N_CTX, N_CONTEXTS, seed=0, bos_id=tok.bos_token_id)
    contexts[2][9] = tok.eos_token_id  # an EOS and a PAD mid-context: excluded like BOS
    contexts[4][20] = tok.pad_token_id
    layer = LAYERS[name]
    with torch.no_grad():
        states = loaded.model(input_ids=torch.tensor(contexts), output_hidden_states=True).hidden_states[layer + 1]
    sae, _ = train_topk_sae(states.reshape(-1, loaded.d_model).numpy(), layer, SAETrainConfig(k=8, steps=200))
    sae_dir = save_sae(sae, tmp_path_factory.mktemp(f"sae_{name}") / "sae")
    return {"name": name, "dir": model_dir, "loaded": loaded, "contexts": contexts, "layer": layer, "sae": sae,
            "sae_dir": sae_dir, "special": special_token_ids(tok)}


def reference_scores(model_dir, contexts, layer, reconstruct, special):
    """SAELens' definitions, one context and one position at a time, in float64 with scipy."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    block = model.get_decoder().layers[layer]
    kl = {"route": [], "zero": []}
    ce = {"clean": [], "route": [], "zero": []}
    for ctx in contexts:
        def route_hook(_m, _i, out, ctx=ctx):
            hidden = (out[0] if isinstance(out, tuple) else out).clone()
            for t, token in enumerate(ctx):
                if token not in special:
                    hidden[0, t] = reconstruct(hidden[0, t][None].float())[0]
            return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

        def zero_hook(_m, _i, out):
            hidden = torch.zeros_like(out[0] if isinstance(out, tuple) else out)
            return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

        logits = {}
        with torch.no_grad():
            ids = torch.tensor([ctx])
            logits["clean"] = model(input_ids=ids).logits[0].double().numpy()
            for name, hook in (("route", route_hook), ("zero", zero_hook)):
                handle = block.register_forward_hook(hook)
                logits[name] = model(input_ids=ids).logits[0].double().numpy()
                handle.remove()
        for t, token in enumerate(ctx):
            if token in special:
                continue
            p = scipy.special.softmax(logits["clean"][t])
            for name in kl:
                kl[name].append(scipy.stats.entropy(p, scipy.special.softmax(logits[name][t])))
            if t < len(ctx) - 1:
                for name in ce:
                    ce[name].append(-scipy.special.log_softmax(logits[name][t])[ctx[t + 1]])
    out = {f"kl_{k}": float(np.mean(v)) for k, v in kl.items()} | {f"ce_{k}": float(np.mean(v)) for k, v in ce.items()}
    out["kl_div_score"] = (out["kl_zero"] - out["kl_route"]) / out["kl_zero"]
    out["ce_loss_score"] = (out["ce_zero"] - out["ce_route"]) / (out["ce_zero"] - out["ce_clean"])
    out["n_tokens_kl"], out["n_tokens_ce"] = len(kl["route"]), len(ce["route"])
    return out


def test_scores_match_position_loops(case):
    ours = whole_context_scores(case["loaded"], case["contexts"], case["layer"], case["sae"].reconstruct, case["special"],
                                batch_size=4)
    ref = reference_scores(case["dir"], case["contexts"], case["layer"], case["sae"].reconstruct, case["special"])
    for key in ("kl_route", "kl_zero", "ce_clean", "ce_route", "ce_zero"):
        assert ours[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-6), key
    for key in ("kl_div_score", "ce_loss_score"):
        assert ours[key] == pytest.approx(ref[key], abs=1e-4), key
    assert (ours["n_tokens_kl"], ours["n_tokens_ce"]) == (ref["n_tokens_kl"], ref["n_tokens_ce"])
    n_special = sum(t in case["special"] for c in case["contexts"] for t in c)
    assert n_special >= N_CONTEXTS + 2  # every context's BOS, plus separators, the EOS and the PAD
    assert ours["n_tokens_kl"] == N_CONTEXTS * N_CTX - n_special
    assert 0 < ours["kl_route"] < ours["kl_zero"] and 0 < ours["kl_div_score"] < 1


def test_batching_and_identity(case):
    loaded, contexts, layer, special = case["loaded"], case["contexts"], case["layer"], case["special"]
    one = whole_context_scores(loaded, contexts, layer, case["sae"].reconstruct, special, batch_size=1)
    all_ = whole_context_scores(loaded, torch.tensor(contexts), layer, case["sae"].reconstruct, special, batch_size=N_CONTEXTS)
    for key in ("kl_route", "kl_zero", "ce_route", "kl_div_score", "ce_loss_score"):
        assert one[key] == pytest.approx(all_[key], rel=1e-5, abs=1e-7), key
    same = whole_context_scores(loaded, contexts, layer, lambda h: h, special)
    assert abs(same["kl_route"]) < 1e-6 and same["ce_route"] == pytest.approx(same["ce_clean"], abs=1e-6)
    assert same["kl_div_score"] == pytest.approx(1.0, abs=1e-6) and same["ce_loss_score"] == pytest.approx(1.0, abs=1e-5)


def test_special_token_ids_are_saelens(llama_dir):
    tok = load_model(llama_dir).tokenizer
    assert special_token_ids(tok) == {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}
    assert tok.unk_token_id not in special_token_ids(tok)  # SAELens does not read unk


def test_special_token_ids_peer_saelens(llama_dir):
    util = pytest.importorskip("sae_lens.util")
    tok = load_model(llama_dir).tokenizer
    assert set(util.get_special_token_ids(tok)) == special_token_ids(tok)


def _stream_contexts(docs, n_ctx, bos):
    """Independent packing: docs joined by BOS into one stream, cut greedily into contexts that start with BOS."""
    stream = []
    for i, doc in enumerate(docs):
        doc = list(doc[1:] if doc and doc[0] == bos else doc)
        stream += ([bos] if i else []) + doc
    out, pos = [], 0
    while True:
        head = [] if pos < len(stream) and stream[pos] == bos else [bos]
        body = stream[pos:pos + n_ctx - len(head)]
        if len(head) + len(body) < n_ctx:
            return out
        out.append(head + body)
        pos += len(body)


def test_contexts_are_packed_like_saelens():
    rng = np.random.default_rng(0)
    bos = 2
    docs = [list(rng.integers(3, 50, rng.integers(1, 40))) for _ in range(30)]
    docs[4] = [bos] + docs[4]  # with and without a leading BOS
    for n_ctx in (2, 5, 16):
        ours = list(pack_contexts(docs, n_ctx, bos, bos))
        assert ours == _stream_contexts(docs, n_ctx, bos)
        assert all(len(c) == n_ctx and c[0] == bos for c in ours)
    a = draw_contexts(docs, 8, 10, seed=1, bos_id=bos)
    assert a == draw_contexts(docs, 8, 10, seed=1, bos_id=bos) and a != draw_contexts(docs, 8, 10, seed=2, bos_id=bos)
    # documents that give fewer contexts than asked give all they have, each once: the hand packing of the same
    # shuffled order (and none at all when they hold less than one context)
    order = list(range(6))
    random.Random(3).shuffle(order)
    every = _stream_contexts([docs[i] for i in order], 16, bos)
    assert 0 < len(every) < 50 and draw_contexts(docs[:6], 16, 50, seed=3, bos_id=bos) == every
    assert draw_contexts(docs[:6], 16, len(every), seed=3, bos_id=bos) == every
    assert draw_contexts([[5, 6]], 64, 5, seed=0, bos_id=bos) == []


def test_contexts_peer_saelens_concat_and_batch_sequences():
    tb = pytest.importorskip("sae_lens.tokenization_and_batching")
    rng = np.random.default_rng(0)
    bos = 2
    docs = [list(rng.integers(3, 50, rng.integers(1, 40))) for _ in range(30)]
    docs[4] = [bos] + docs[4]
    for n_ctx in (2, 5, 16):
        theirs = [c.tolist() for c in tb.concat_and_batch_sequences(iter(torch.tensor(d) for d in docs), n_ctx,
                                                                    begin_batch_token_id=bos, sequence_separator_token_id=bos)]
        assert list(pack_contexts(docs, n_ctx, bos, bos)) == theirs


class _Contexts:
    """The slice of SAELens' ActivationsStore that run_evals uses: fixed token batches in order."""

    def __init__(self, tokens: torch.Tensor, batch_size: int):
        self.tokens, self.store_batch_size_prompts, self.context_size, self.next = tokens, batch_size, tokens.shape[1], 0

    def get_batch_tokens(self, batch_size=None, **_):
        batch = self.tokens[self.next:self.next + (batch_size or self.store_batch_size_prompts)]
        self.next += len(batch)
        return batch

    def reset_input_dataset(self):
        self.next = 0


def test_peer_saelens_run_evals(case):
    """SAELens' own run_evals on the same SAE directory and contexts, offline (TransformerLens' bridge on the
    local checkpoint). Tolerance 1e-5 on the scores, 1e-5 relative on the means: both sides are float32
    forwards of the same HF modules (logits agree to ~2e-5 of |logits| <= 30); what differs is float32
    summation order (theirs sums in float32, ours in float64). The same run_evals call also gives SAELens'
    L0, feature densities (dead = density 0) and explained variance, held to SparseAutoencoder.sparsity and
    causal_kl.sae.explained_variance on the same non-special states."""
    sae_lens = pytest.importorskip("sae_lens")
    bridge_mod = pytest.importorskip("transformer_lens.model_bridge")
    from sae_lens.evals import EvalConfig, run_evals
    from sae_lens.training.activation_scaler import ActivationScaler

    bridge = bridge_mod.TransformerBridge.boot_transformers(str(case["dir"]), device="cpu", dtype=torch.float32)
    sae = sae_lens.SAE.load_from_disk(str(case["sae_dir"]))
    assert sae.cfg.metadata.hook_name == f"blocks.{case['layer']}.hook_resid_post"
    batch = 3
    metrics, features = run_evals(sae, _Contexts(torch.tensor(case["contexts"]), batch), bridge, ActivationScaler(),
                                  EvalConfig(batch_size_prompts=batch, n_eval_reconstruction_batches=N_CONTEXTS // batch,
                                             compute_kl=True, compute_ce_loss=True, compute_sparsity_metrics=True,
                                             compute_variance_metrics=True, compute_featurewise_density_statistics=True,
                                             n_eval_sparsity_variance_batches=N_CONTEXTS // batch),
                                  exclude_special_tokens=True)
    kl, ce = metrics["model_behavior_preservation"], metrics["model_performance_preservation"]
    ours = whole_context_scores(case["loaded"], case["contexts"], case["layer"], case["sae"].reconstruct, case["special"])
    assert ours["kl_div_score"] == pytest.approx(kl["kl_div_score"], abs=1e-5)
    assert ours["ce_loss_score"] == pytest.approx(ce["ce_loss_score"], abs=1e-5)
    pairs = {"kl_route": kl["kl_div_with_sae"], "kl_zero": kl["kl_div_with_ablation"], "ce_clean": ce["ce_loss_without_sae"],
             "ce_route": ce["ce_loss_with_sae"], "ce_zero": ce["ce_loss_with_ablation"]}
    for key, theirs in pairs.items():
        assert ours[key] == pytest.approx(theirs, rel=1e-5, abs=1e-7), key

    # L0, dead latents and explained variance of the SAE on the same (non-special) layer-L states
    ids = torch.tensor(case["contexts"])
    with torch.no_grad():
        states = case["loaded"].model(input_ids=ids, output_hidden_states=True).hidden_states[case["layer"] + 1]
    vectors = states[~torch.isin(ids, torch.tensor(sorted(case["special"])))]
    stats = case["sae"].sparsity(vectors)
    assert stats.l0 == pytest.approx(metrics["sparsity"]["l0"], rel=1e-6)
    assert stats.n_dead == sum(density == 0 for density in features["feature_density"])
    assert explained_variance(vectors, case["sae"].reconstruct(vectors)) == pytest.approx(
        metrics["reconstruction_quality"]["explained_variance"], abs=1e-4)


def test_a_corpus_of_fewer_contexts_is_scored_on_those_it_has_and_says_so(case, tmp_path, caplog):
    """The whole_context job with more contexts asked for than 4 short documents give: every context they give is
    scored once (the documents packed by hand in the seeded order, scored position by position), the JSON and the
    log say how many of how many; documents shorter than one context give a skipped record with the reason."""
    import json
    import logging

    import pyarrow as pa

    from causal_kl.contracts import DOCS
    from causal_kl.io import write_parquet
    from causal_kl.jobs.whole_context import whole_context
    from run_files import PROVENANCE

    if case["name"] != "gemma3":
        pytest.skip("the job on one model is enough")
    tok = case["loaded"].tokenizer
    docs = [tok(t)["input_ids"] for t in fixtures.make_texts(4, (20, 30), seed=5)]

    def run(doc_tokens, name):
        path = tmp_path / f"{name}.parquet"
        write_parquet(path, pa.table({"doc_id": [f"c:{i}" for i in range(len(doc_tokens))],
                                      "row": list(range(len(doc_tokens))),
                                      "n_tokens": [len(d) for d in doc_tokens],
                                      "input_ids": [list(map(int, d)) for d in doc_tokens]}, schema=DOCS.schema()), DOCS)
        out = tmp_path / f"{name}.json"
        whole_context(docs=str(path), train_gold=[], sae=[], vectors=[], explanations=[], checkpoint=[], model_dir=[],
                      scores=str(out), route_entry={"kind": "sae", "path": str(case["sae_dir"]), "format": "auto",
                                                    "layer": None, "check_hook": True, "batch_size": 64},
                      fingerprints={}, settings={"n_ctx": N_CTX, "n_contexts": 64, "batch_size": 4}, seed=7,
                      model={"path": str(case["dir"])}, model_fingerprint=None, dtype="float32", device="cpu",
                      layer=str(case["layer"]), route="s", provenance=PROVENANCE)
        return json.loads(out.read_text())

    with caplog.at_level(logging.WARNING):
        record = run(docs, "docs")
    order = list(range(len(docs)))
    random.Random(7).shuffle(order)
    every = _stream_contexts([docs[i] for i in order], N_CTX, tok.bos_token_id)
    assert 0 < len(every) < 64
    ref = reference_scores(case["dir"], every, case["layer"], case["sae"].reconstruct, case["special"])
    for key in ("kl_route", "kl_zero", "ce_clean", "ce_route", "ce_zero"):
        assert record[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-6), key
    assert record["n_tokens_kl"] == ref["n_tokens_kl"]
    assert record["n_contexts"] == len(every) and record["n_contexts_requested"] == 64
    assert f"the {len(every)} contexts of {N_CTX} tokens" in record["note"] and "not the 64" in record["note"]
    assert record["note"] in caplog.text
    short = run([docs[0][:N_CTX // 2]], "short")
    assert "give no context of whole_context.n_ctx = 32 tokens" in short["skipped"] and "kl_div_score" not in short


def test_the_report_says_when_fewer_contexts_were_scored(tmp_path):
    import json

    from causal_kl.report import saelens_html

    record = {"kl_div_score": 0.9, "ce_loss_score": 0.8, "n_contexts": 16, "n_ctx": 128, "n_contexts_requested": 64,
              "note": "scored on the 16 contexts of 128 tokens the run's 4 documents give, not the 64"}
    (tmp_path / "wc.json").write_text(json.dumps(record))
    html = saelens_html({"whole_context": str(tmp_path / "wc.json")})
    assert "Contexts: 16 of 128 tokens from the run's documents (scored on the 16 contexts" in html
    del record["note"]
    (tmp_path / "wc.json").write_text(json.dumps(record))
    assert "Contexts: 16 of 128 tokens from the run's documents.</div>" in saelens_html({"whole_context": str(tmp_path / "wc.json")})


@pytest.mark.parametrize("hook", ["mlp_out", "attn_z"])
def test_scores_at_a_hook_inside_the_block(case, hook):
    """At a sublayer hook the route's reconstruction and the zero ablation replace that hook's activation (of its own
    width): the identity scores 1, and zeroing the MLP's (or the heads') output is another damage than zeroing the
    block's output."""
    loaded, contexts, layer, special = case["loaded"], case["contexts"], case["layer"], case["special"]
    widths = []

    def identity(h):
        widths.append(h.shape[-1])
        return h

    same = whole_context_scores(loaded, contexts, layer, identity, special, hook=hook)
    assert set(widths) == {loaded.hook_width(hook)}
    assert abs(same["kl_route"]) < 1e-6 and same["kl_div_score"] == pytest.approx(1.0, abs=1e-6)
    block = whole_context_scores(loaded, contexts, layer, lambda h: h, special)
    assert 0 < same["kl_zero"] != pytest.approx(block["kl_zero"])
