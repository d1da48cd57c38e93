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


HAND_HOOKS = {
    "llama": {"resid_mid": ("post_attention_layernorm", "in"), "attn_z": ("self_attn.o_proj", "in"),
              "attn_out": ("self_attn.o_proj", "out"), "mlp_in": ("mlp", "in"), "mlp_out": ("mlp", "out")},
    "gemma3": {"resid_mid": ("pre_feedforward_layernorm", "in"), "attn_z": ("self_attn.o_proj", "in"),
               "attn_out": ("post_attention_layernorm", "out"), "mlp_in": ("mlp", "in"),
               "mlp_out": ("post_feedforward_layernorm", "out")},
}
"""Where each hook sits in a block, read off transformers' LlamaDecoderLayer / Gemma3DecoderLayer forwards (the
modules the family tables name; resid_post is the block's own output)."""


def _module(block, path):
    for part in path.split("."):
        block = getattr(block, part)
    return block


def hand_hook(block, where, fn):
    """A plain torch hook at ``where`` = (module path in the block, "in" | "out"), or the block's output for None:
    ``fn(activation)`` -> None (leave it) or its replacement. The modules here take their activation as the first
    positional argument, and return a tensor (the block: a tensor or a tuple)."""
    module, side = (block, "out") if where is None else (_module(block, where[0]), where[1])
    if side == "in":
        def pre(_m, args):
            new = fn(args[0])
            return None if new is None else (new, *args[1:])

        return module.register_forward_pre_hook(pre)

    def post(_m, _i, out):
        new = fn(out[0] if isinstance(out, tuple) else out)
        return None if new is None else ((new, *out[1:]) if isinstance(out, tuple) else new)

    return module.register_forward_hook(post)


def reference_scores(model_dir, contexts, layer, reconstruct, special, at=None, read=None):
    """SAELens' definitions, one context and one position at a time, in float64 with scipy. The splice goes at
    ``at`` (``HAND_HOOKS`` entry; None: the block's output); a transcoder reads ``read``, recorded in the same
    forward by its own hook."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    block = model.get_decoder().layers[layer]
    kl = {"route": [], "zero": []}
    ce = {"clean": [], "route": [], "zero": []}
    for ctx in contexts:
        recorded = []

        def route_hook(out, ctx=ctx):
            source = recorded.pop() if read is not None else out
            hidden = out.clone()
            for t, token in enumerate(ctx):
                if token not in special:
                    hidden[0, t] = reconstruct(source[0, t][None].float())[0]
            return hidden

        def zero_hook(out):
            return torch.zeros_like(out)

        logits = {}
        with torch.no_grad():
            ids = torch.tensor([ctx])
            logits["clean"] = model(input_ids=ids).logits[0].double().numpy()
            for name, hook in (("route", route_hook), ("zero", zero_hook)):
                handles = [hand_hook(block, read, lambda x: recorded.append(x.clone()))] if read is not None else []
                handles.append(hand_hook(block, at, hook))
                logits[name] = model(input_ids=ids).logits[0].double().numpy()
                for handle in handles:
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


# ------------------------------------------------------------------- hooks inside the block
# SAELens' TransformerBridge names for our hooks on these models (checked against HAND_HOOKS by the peer tests
# below). For mlp_in the bridge's ``blocks.L.hook_mlp_in`` is TransformerLens' (the un-normalised residual before
# ln2, our resid_mid); the MLP's normalised input, our mlp_in, is its ``blocks.L.ln2.hook_normalized``.
BRIDGE_NAMES = {"resid_mid": "hook_resid_mid", "attn_z": "attn.hook_z", "attn_out": "hook_attn_out",
                "mlp_in": "ln2.hook_normalized", "mlp_out": "hook_mlp_out"}
HOOK_SAES = ("mlp_out", "attn_z")


def _hand_record(case, hook):
    """The activations at ``hook`` of the case's layer on all its contexts, ``[n_contexts * n_ctx, width]``."""
    loaded, layer = case["loaded"], case["layer"]
    got = []
    handle = hand_hook(loaded.layers[layer], HAND_HOOKS[case["name"]][hook], lambda x: got.append(x.detach().clone()))
    try:
        with torch.no_grad():
            loaded.model(input_ids=torch.tensor(case["contexts"]))
    finally:
        handle.remove()
    return got[0].reshape(-1, got[0].shape[-1])


@pytest.fixture(scope="module")
def hook_routes(case, tmp_path_factory):
    """A TopK SAE trained on each of HOOK_SAES at the case's layer (saved as SAELens files with the bridge's hook
    name), and a ReLU transcoder mlp_in -> mlp_out: random encoder, decoder fitted by least squares."""
    layer = case["layer"]
    out = {}
    for hook in HOOK_SAES:
        states = _hand_record(case, hook)
        sae, _ = train_topk_sae(states.numpy(), layer, SAETrainConfig(k=8, steps=200))
        sae.hook_name = f"blocks.{layer}.{BRIDGE_NAMES[hook]}"
        out[hook] = {"sae": sae, "dir": save_sae(sae, tmp_path_factory.mktemp(f"sae_{case['name']}_{hook}") / "sae")}
    x, y = _hand_record(case, "mlp_in"), _hand_record(case, "mlp_out")
    gen = torch.Generator().manual_seed(0)
    w_enc = torch.randn(x.shape[1], 128, generator=gen) / x.shape[1] ** 0.5
    b_enc = torch.randn(128, generator=gen) * 0.1
    feats = torch.relu(x @ w_enc + b_enc)
    sol = torch.linalg.lstsq(torch.cat([feats, torch.ones(len(feats), 1)], 1).double(), y.double()).solution.float()
    out["transcoder"] = {"W_enc": w_enc, "b_enc": b_enc, "W_dec": sol[:-1].contiguous(), "b_dec": sol[-1].contiguous()}
    return out


def _transcode(weights):
    """The transcoder as a plain function: relu(x W_enc + b_enc) W_dec + b_dec."""
    return lambda x: torch.relu(x @ weights["W_enc"] + weights["b_enc"]) @ weights["W_dec"] + weights["b_dec"]


@pytest.fixture(scope="module")
def bridge(case):
    """TransformerLens' TransformerBridge on the local checkpoint (offline, float32), as test_peer_saelens_run_evals
    runs SAELens. Not SAELens' SAETransformerBridge: at sae-lens 6.54.12 / transformer-lens 3.9.0 its hook_dict
    leaves out the bridge's aliases, so run_with_hooks at ``blocks.L.hook_mlp_out`` (or any alias: hook_resid_post,
    attn.hook_z) silently adds no hook and run_evals would score the clean model."""
    pytest.importorskip("sae_lens")
    mod = pytest.importorskip("transformer_lens.model_bridge")
    return mod.TransformerBridge.boot_transformers(str(case["dir"]), device="cpu", dtype=torch.float32)


@pytest.mark.parametrize("hook", HOOK_SAES)
def test_peer_saelens_run_evals_at_hook(case, hook_routes, bridge, hook):
    """SAELens' own run_evals (kl and ce only) with an SAE at ``blocks.L.hook_mlp_out`` / ``blocks.L.attn.hook_z``:
    its eval splices at that hook of the bridge (hook_z as [.., heads, head_dim], flattened for the SAE and
    reshaped back), ours at the family's module through models.at_hook (hook_z flat).

    The five means agree to 1e-5 relative (in practice ~1e-7), as at the residual stream. The scores: the
    kl_div_score to 1e-5; the ce_loss_score divides by ce_zero - ce_clean, which on the tiny Llama is ~0.016 of
    CE values ~5.9, so the float32 rounding of run_evals' means (~5e-7) moves it by ~3e-5. The ce_loss_score is
    held to run_evals' within that propagated rounding, and to 1e-5 against the score of SAELens' own per-token
    values (get_recons_loss, the function run_evals calls, on the same batches) averaged in float64."""
    sae_lens = pytest.importorskip("sae_lens")
    from sae_lens.evals import EvalConfig, get_recons_loss, run_evals
    from sae_lens.training.activation_scaler import ActivationScaler

    layer = case["layer"]
    sae = sae_lens.SAE.load_from_disk(str(hook_routes[hook]["dir"]))
    assert sae.cfg.metadata.hook_name == f"blocks.{layer}.{'attn.hook_z' if hook == 'attn_z' else 'hook_mlp_out'}"
    batch = 3
    metrics, _ = run_evals(sae, _Contexts(torch.tensor(case["contexts"]), batch), bridge, ActivationScaler(),
                           EvalConfig(batch_size_prompts=batch, n_eval_reconstruction_batches=N_CONTEXTS // batch,
                                      compute_kl=True, compute_ce_loss=True), exclude_special_tokens=True)
    kl, ce = metrics["model_behavior_preservation"], metrics["model_performance_preservation"]
    ours = whole_context_scores(case["loaded"], case["contexts"], layer, hook_routes[hook]["sae"].reconstruct,
                                case["special"], hook=hook)
    assert (ours["hook"], ours["hook_in"], ours["layer"]) == (hook, None, layer)
    pairs = {"kl_route": kl["kl_div_with_sae"], "kl_zero": kl["kl_div_with_ablation"], "ce_clean": ce["ce_loss_without_sae"],
             "ce_route": ce["ce_loss_with_sae"], "ce_zero": ce["ce_loss_with_ablation"]}
    for key, theirs in pairs.items():
        assert ours[key] == pytest.approx(theirs, rel=1e-5, abs=1e-7), key
    assert 0 < ours["kl_route"] < ours["kl_zero"]
    assert ours["kl_div_score"] == pytest.approx(kl["kl_div_score"], abs=1e-5)
    gap = abs(ours["ce_zero"] - ours["ce_clean"])
    rounding = 4 * float(np.finfo(np.float32).eps) * ours["ce_zero"] * (1 + abs(ours["ce_loss_score"])) / gap
    assert ours["ce_loss_score"] == pytest.approx(ce["ce_loss_score"], abs=max(1e-5, rounding))

    # SAELens' per-token values, reduced as get_downstream_reconstruction_metrics does but in float64
    ids = torch.tensor(case["contexts"])
    values = {"kl_div_with_sae": [], "kl_div_with_ablation": [], "ce_loss_with_sae": [], "ce_loss_without_sae": [],
              "ce_loss_with_ablation": []}
    for start in range(0, N_CONTEXTS, batch):
        tokens = ids[start:start + batch]
        keep = ~torch.isin(tokens, torch.tensor(sorted(case["special"])))
        for name, value in get_recons_loss(sae, bridge, ActivationScaler(), tokens, compute_kl=True, compute_ce_loss=True,
                                           ignore_tokens=sorted(case["special"])).items():
            values[name].append(value[keep if value.shape[1] == keep.shape[1] else keep[:, :-1]])
    m = {name: torch.cat(v).double().mean().item() for name, v in values.items()}
    assert ours["kl_div_score"] == pytest.approx(
        (m["kl_div_with_ablation"] - m["kl_div_with_sae"]) / m["kl_div_with_ablation"], abs=1e-5)
    assert ours["ce_loss_score"] == pytest.approx((m["ce_loss_with_ablation"] - m["ce_loss_with_sae"])
                                                  / (m["ce_loss_with_ablation"] - m["ce_loss_without_sae"]), abs=1e-5)


def test_peer_saelens_transcoder(case, hook_routes, bridge):
    """A transcoder (``hook_name`` the MLP's normalised input, ``hook_name_out`` blocks.L.hook_mlp_out) attached to
    SAELens' SAETransformerBridge, against ours with hook_in="mlp_in", hook="mlp_out". SAELens' run_evals cannot
    score a transcoder (get_recons_loss splices decode(encode(x)) back at hook_name), so the three forwards are the
    bridge's own (clean; with the transcoder attached; hook_mlp_out zeroed), reduced as get_recons_loss and
    get_downstream_reconstruction_metrics do (sae_lens.evals._kl, TransformerLens' loss per token, one mean over
    the tokens, taken in float64: SAELens' float32 mean moves the tiny Llama's ce_loss_score by ~1e-5, see
    test_peer_saelens_run_evals_at_hook). The bridge's public splice has no special-token mask, so both sides score every position here;
    the mask is held to the position loops in test_transcoder_matches_position_loops."""
    sae_lens = pytest.importorskip("sae_lens")
    from sae_lens.evals import _kl
    from sae_lens.saes.sae import SAEMetadata

    layer, weights = case["layer"], hook_routes["transcoder"]
    tc = sae_lens.Transcoder(sae_lens.TranscoderConfig(
        d_in=weights["W_enc"].shape[0], d_sae=weights["W_enc"].shape[1], d_out=weights["W_dec"].shape[1],
        apply_b_dec_to_input=False, metadata=SAEMetadata(hook_name=f"blocks.{layer}.{BRIDGE_NAMES['mlp_in']}",
                                                         hook_name_out=f"blocks.{layer}.hook_mlp_out")))
    tc.load_state_dict({k: v.clone() for k, v in weights.items()})
    ids = torch.tensor(case["contexts"])
    sae_bridge = pytest.importorskip("sae_lens.analysis.sae_transformer_bridge").SAETransformerBridge.boot_transformers(
        str(case["dir"]), device="cpu", dtype=torch.float32)
    with torch.no_grad():
        clean, ce_clean = bridge(ids, return_type="both", loss_per_token=True)
        with sae_bridge.saes(saes=[tc]):
            assert set(sae_bridge.acts_to_saes) == {tc.cfg.metadata.hook_name}  # attached (add_sae only warns)
            route, ce_route = sae_bridge(ids, return_type="both", loss_per_token=True)
        zero, ce_zero = bridge.run_with_hooks(ids, return_type="both", loss_per_token=True,
                                              fwd_hooks=[(f"blocks.{layer}.hook_mlp_out", lambda a, hook: torch.zeros_like(a))])
    theirs = {"kl_route": _kl(clean, route), "kl_zero": _kl(clean, zero), "ce_clean": ce_clean, "ce_route": ce_route,
              "ce_zero": ce_zero}
    theirs = {k: v.flatten().double().mean().item() for k, v in theirs.items()}  # one mean, in float64 as ours
    theirs["kl_div_score"] = (theirs["kl_zero"] - theirs["kl_route"]) / theirs["kl_zero"]
    theirs["ce_loss_score"] = (theirs["ce_zero"] - theirs["ce_route"]) / (theirs["ce_zero"] - theirs["ce_clean"])
    ours = whole_context_scores(case["loaded"], case["contexts"], layer, _transcode(weights), special_ids=(),
                                hook="mlp_out", hook_in="mlp_in")
    assert (ours["hook"], ours["hook_in"]) == ("mlp_out", "mlp_in")
    assert ours["n_tokens_kl"] == N_CONTEXTS * N_CTX
    for key in ("kl_div_score", "ce_loss_score"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-5), key
    for key in ("kl_route", "kl_zero", "ce_clean", "ce_route", "ce_zero"):
        assert ours[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-7), key
    assert 0 < ours["kl_route"] < ours["kl_zero"]


def test_transcoder_matches_position_loops(case, hook_routes):
    """The transcoder with the special tokens left out, against the scipy position loops with hand-written hooks
    (the input recorded at the MLP's input, the output spliced at the module holding mlp_out)."""
    transcode = _transcode(hook_routes["transcoder"])
    ours = whole_context_scores(case["loaded"], case["contexts"], case["layer"], transcode, case["special"],
                                batch_size=4, hook="mlp_out", hook_in="mlp_in")
    hooks = HAND_HOOKS[case["name"]]
    ref = reference_scores(case["dir"], case["contexts"], case["layer"], transcode, case["special"],
                           at=hooks["mlp_out"], read=hooks["mlp_in"])
    for key in ("kl_route", "kl_zero", "ce_clean", "ce_route", "ce_zero"):
        assert ours[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-6), key
    for key in ("kl_div_score", "ce_loss_score"):
        assert ours[key] == pytest.approx(ref[key], abs=1e-4), key
    assert (ours["n_tokens_kl"], ours["n_tokens_ce"]) == (ref["n_tokens_kl"], ref["n_tokens_ce"])
    # the identity is no transcoder: an SAE at mlp_out given hook_in=mlp_out is scored as one
    same = whole_context_scores(case["loaded"], case["contexts"], case["layer"], lambda h: h, case["special"],
                                hook="mlp_out", hook_in="mlp_out")
    assert same["hook_in"] is None and abs(same["kl_route"]) < 1e-6


@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_at_hook_is_a_hand_written_hook_on_the_module_the_family_names(name, request):
    """models.at_hook at every hook of block 1 of a tiny Llama and a tiny Gemma-3: what it records is what a plain
    torch hook on the module the family table names (HAND_HOOKS, read off transformers' decoder layers; the block's
    output for resid_post) sees, and its splice gives the same logits as that hand hook making the same change."""
    from causal_kl.families import hook_modules
    from causal_kl.hooks import HOOKS, HookModule
    from causal_kl.models import at_hook

    loaded = load_model(request.getfixturevalue(f"{name}_dir"))
    table = hook_modules(loaded.family, loaded.text_config)
    assert dict(table) == {"resid_post": None, **{h: HookModule(*w) for h, w in HAND_HOOKS[name].items()}}
    block, layer = loaded.layers[1], 1
    ids = torch.tensor([[2, 40, 41, 42, 43, 44, 45, 46, 47, 1]])
    with torch.no_grad():
        clean = loaded.model(input_ids=ids).logits

        def change(x):
            return x * 0.5 + torch.linspace(-1, 1, x.shape[-1])

        for hook in HOOKS:
            where = HAND_HOOKS[name].get(hook)
            seen, hand_seen = [], []
            with at_hook(loaded, layer, hook, lambda x: seen.append(x.clone())):
                loaded.model(input_ids=ids)
            handle = hand_hook(block, where, lambda x: hand_seen.append(x.clone()))
            loaded.model(input_ids=ids)
            handle.remove()
            assert len(seen) == len(hand_seen) == 1 and torch.equal(seen[0], hand_seen[0]), hook
            assert seen[0].shape == (1, ids.shape[1], loaded.hook_width(hook)), hook

            with at_hook(loaded, layer, hook, change):
                spliced = loaded.model(input_ids=ids).logits
            if hook == "resid_mid":
                # the norm's input is where resid_mid is read, not where it is replaced: a splice there changes what
                # the MLP reads but not the residual (test_hook_patching's test_a_splice_at_resid_mid_is_what_...)
                assert (spliced - clean).abs().max() > 1e-3, hook
                continue
            handle = hand_hook(block, where, change)
            hand = loaded.model(input_ids=ids).logits
            handle.remove()
            assert torch.equal(spliced, hand), hook
            assert (spliced - clean).abs().max() > 1e-3, hook  # the splice took effect
        assert torch.equal(loaded.model(input_ids=ids).logits, clean)  # and every hook came off


def test_a_transcoder_reads_an_earlier_hook_and_widths_are_checked(case):
    loaded, contexts, layer = case["loaded"], case["contexts"][:1], case["layer"]
    with pytest.raises(ValueError, match="did not fire before"):
        whole_context_scores(loaded, contexts, layer, lambda h: h, case["special"], hook="mlp_in", hook_in="mlp_out")
    with pytest.raises(ValueError, match="reconstruct returned"):
        whole_context_scores(loaded, contexts, layer, lambda h: h[:, :8], case["special"], hook="attn_z")
    with pytest.raises(ValueError, match="unknown hook"):
        whole_context_scores(loaded, contexts, layer, lambda h: h, case["special"], hook="resid_pre")


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
