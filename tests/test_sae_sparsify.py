"""EleutherAI sparsify SAEs (a folder per hookpoint: cfg.json + sae.safetensors) through the `sae` route.

Checked against sparsify itself (``eai-sparsify``: its ``SparseCoder`` writes the folders with ``save_to_disk``
and its own ``forward`` / ``encode`` / ``decode`` give the reference), and against a numpy re-implementation of
sparsify's documented forward (``sparsify_reference``) on folders written without sparsify, so the format is
checked where sparsify is not installed too. What sparsify's hookpoint ``layers.L`` is, is read from sparsify's
own code (``get_layer_list``, the trainer's forward hook) and compared with our layer L (``causal_kl.gold``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from causal_kl.errors import CausalKLError
from causal_kl.routes.sae import check_sae_config, reconstruct
from causal_kl.sae import load_sae
from causal_kl.sae_format import parse_hook_name, sparsify_hook
from test_sae import D_IN, D_SAE, K, _one_line_error, x  # noqa: F401 (x is a fixture)

LAYER = 2


# ------------------------------------------------------------------------------ the reference
def sparsify_reference(x, t, k=K):
    """sparsify's SparseCoder forward, from its code (sparse_coder.py, fused_encoder.py), in float64:
    ``pre = relu((x - b_dec) @ encoder.weight.T + encoder.bias)``, keep the k largest, ``out = acts @ W_dec + b_dec``."""
    x = np.asarray(x, np.float64)
    w, b, w_dec, b_dec = (np.asarray(t[n], np.float64) for n in ("encoder.weight", "encoder.bias", "W_dec", "b_dec"))
    pre = np.maximum((x - b_dec) @ w.T + b, 0.0)
    acts = np.zeros_like(pre)
    for i in range(len(pre)):
        top = np.argsort(-pre[i])[:k]
        acts[i, top] = pre[i, top]
    return acts, acts @ w_dec + b_dec


def sparsify_tensors(seed=0, d_in=D_IN, n=D_SAE):
    rng = np.random.default_rng(seed)
    t = {"encoder.weight": rng.normal(0, 0.5, (n, d_in)), "encoder.bias": rng.normal(0, 0.3, n),
         "W_dec": rng.normal(0, 0.5, (n, d_in)), "b_dec": rng.normal(0, 0.5, d_in)}
    t["encoder.bias"][[3, 17]] = -1e3  # latents that never fire
    return {k: v.astype(np.float32) for k, v in t.items()}


def write_sparsify(folder, tensors, **cfg):
    """A folder as sparsify's ``SparseCoder.save_to_disk`` writes it (``cfg.json`` = ``SparseCoderConfig.to_dict()``
    + ``d_in``), without sparsify."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    n, d_in = tensors["encoder.weight"].shape if "encoder.weight" in tensors else (D_SAE, D_IN)
    full = {"activation": "topk", "expansion_factor": 32, "normalize_decoder": True, "num_latents": n, "k": K,
            "multi_topk": False, "skip_connection": False, "transcode": False, "d_in": d_in, **cfg}
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(folder / "sae.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(full))
    return folder


def _entry(path, **kw):
    return {"kind": "sae", "path": str(path), "format": "auto", "check_hook": True, "batch_size": 7, **kw}


# ----------------------------------------------------------------------------- against sparsify
@pytest.fixture(scope="module")
def coder(tmp_path_factory):
    """A SparseCoder made and saved by sparsify itself (random weights, non-zero biases), in a ``layers.2`` folder."""
    sparsify = pytest.importorskip("sparsify")
    torch.manual_seed(0)
    sc = sparsify.SparseCoder(D_IN, sparsify.SparseCoderConfig(num_latents=D_SAE, k=K))
    with torch.no_grad():
        sc.encoder.bias.normal_(0, 0.3)
        sc.b_dec.normal_(0, 0.5)
        sc.encoder.bias[[3, 17]] = -1e3
    folder = tmp_path_factory.mktemp("sparsify") / "sae-tiny-32x" / f"layers.{LAYER}"
    sc.save_to_disk(folder)
    return sc, folder


def test_same_as_sparsify_itself(coder, x):
    """Our route on sparsify's own folder: sparsify's forward (reconstruction), encode (latents, L0) and
    ``SparseCoder.load_from_disk`` of the same folder."""
    sparsify = pytest.importorskip("sparsify")
    sc, folder = coder
    check_sae_config(_entry(folder), "s", LAYER, D_IN, "config.yaml")
    recon, stats = reconstruct(_entry(folder), LAYER, x, "cpu", "config routes.s")
    theirs = sparsify.SparseCoder.load_from_disk(folder)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        for model in (sc, theirs):
            np.testing.assert_allclose(recon, model(xt).sae_out.numpy(), rtol=1e-5, atol=1e-5)
        enc = theirs.encode(xt)
        dense = torch.zeros(len(x), D_SAE).scatter_(-1, enc.top_indices, enc.top_acts).numpy()
        np.testing.assert_allclose(theirs.decode(enc.top_acts, enc.top_indices).numpy(), recon, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(load_sae(folder).encode(x).numpy(), dense, rtol=1e-5, atol=1e-6)
    assert stats["l0"] == pytest.approx((dense != 0).sum(axis=1).mean())
    assert stats["n_dead"] == int((~(dense != 0).any(axis=0)).sum()) >= 2
    assert (stats["architecture"], stats["k"], stats["d_sae"], stats["hook_name"]) == ("topk", K, D_SAE, "blocks.2.hook_resid_post")
    # and the numpy re-implementation agrees with sparsify (so the tests below, without sparsify, test the same thing)
    t = {k: v.detach().numpy() for k, v in {"encoder.weight": sc.encoder.weight, "encoder.bias": sc.encoder.bias,
                                            "W_dec": sc.W_dec, "b_dec": sc.b_dec}.items()}
    np.testing.assert_allclose(sparsify_reference(x, t)[1], recon, rtol=1e-4, atol=1e-4)


def test_bfloat16_weights_as_sparsify_saves_them(tmp_path, x):
    """sparsify saves a coder in its training dtype (the early releases in bfloat16): read and run in float32."""
    sparsify = pytest.importorskip("sparsify")
    torch.manual_seed(1)
    sc = sparsify.SparseCoder(D_IN, sparsify.SparseCoderConfig(num_latents=D_SAE, k=K), dtype=torch.bfloat16)
    with torch.no_grad():
        sc.encoder.bias.normal_(0, 0.3)
        sc.b_dec.normal_(0, 0.5)
    sc.save_to_disk(tmp_path / "layers.2")
    check_sae_config(_entry(tmp_path / "layers.2"), "s", LAYER, D_IN, "config.yaml")
    recon, _ = reconstruct(_entry(tmp_path / "layers.2"), LAYER, x)
    with torch.no_grad():
        np.testing.assert_allclose(recon, sc.float()(torch.from_numpy(x)).sae_out.numpy(), rtol=1e-5, atol=1e-5)


def test_layers_L_is_the_output_of_block_L(llama_dir):
    """sparsify names a hookpoint after a module under the model's ``base_model`` (``get_layer_list``: the ModuleList
    of ``num_hidden_layers`` modules, ``layers`` -> ``layers.L``) and records its forward output (the trainer's hook:
    ``outputs[0]`` of a tuple). That is block L's output: our layer L, which causal_kl.gold extracts."""
    pytest.importorskip("sparsify")
    from sparsify.utils import get_layer_list

    from causal_kl.gold import block_output
    from causal_kl.models import load_model

    loaded = load_model(str(llama_dir), dtype="float32", device="cpu")
    layers_name, _ = get_layer_list(loaded.model)
    ids = list(range(3, 40))
    for layer in (1, loaded.n_layers - 1):  # the last block too: its output, before the final norm
        hookpoint = f"{layers_name}.{layer}"
        assert parse_hook_name(hookpoint).layer == layer
        captured = {}

        def hook(_module, _inputs, outputs):  # sparsify/trainer.py's hook, as it unpacks the output
            captured["x"] = (outputs[0] if isinstance(outputs, tuple) else outputs).detach()[0]

        handle = loaded.model.base_model.get_submodule(hookpoint).register_forward_hook(hook)
        try:
            with torch.no_grad():
                loaded.model(input_ids=torch.tensor([ids]))
        finally:
            handle.remove()
        torch.testing.assert_close(captured["x"], block_output(loaded, ids, layer), rtol=0, atol=0)


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox"])
def test_hookpoint_names_of_other_families(family):
    """GPT-2's blocks are ``h.L`` under its base_model, Pythia's ``layers.L``: both name decoder block L."""
    pytest.importorskip("sparsify")
    import transformers
    from sparsify.utils import get_layer_list

    if family == "gpt2":
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=3, n_embd=16, n_head=2, vocab_size=50))
        blocks = model.transformer.h
    else:
        model = transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
            num_hidden_layers=3, hidden_size=16, num_attention_heads=2, intermediate_size=32, vocab_size=50))
        blocks = model.gpt_neox.layers
    name, modules = get_layer_list(model)
    assert modules is blocks
    for layer in range(3):
        assert model.base_model.get_submodule(f"{name}.{layer}") is blocks[layer]
        assert parse_hook_name(f"{name}.{layer}").hook_name == f"blocks.{layer}.hook_resid_post"


# ---------------------------------------------------------------------- against the reference
def test_reconstruction_matches_the_reference(tmp_path, x):
    t = sparsify_tensors()
    release = tmp_path / "sae-tiny-32x"
    for layer in (1, 3):
        write_sparsify(release / f"layers.{layer}", sparsify_tensors(seed=layer))
    entry = _entry(release / "layers.{layer}", layer=[1, 3])
    for layer in (1, 3):
        check_sae_config(entry, "s", layer, D_IN, "config.yaml")
        recon, stats = reconstruct(entry, layer, x)
        acts, out = sparsify_reference(x, sparsify_tensors(seed=layer))
        np.testing.assert_allclose(recon, out, rtol=1e-4, atol=1e-4)
        assert stats["l0"] == pytest.approx((acts != 0).sum(axis=1).mean())
        assert stats["hook_name"] == f"blocks.{layer}.hook_resid_post"
    # the older spellings: num_latents 0 = d_in x expansion_factor; no activation key; the sae library's signed false
    old = write_sparsify(tmp_path / "old" / "layers.2", sparsify_tensors(n=2 * D_IN), num_latents=0, expansion_factor=2,
                         signed=False)
    cfg = json.loads((old / "cfg.json").read_text())
    cfg.pop("activation")
    (old / "cfg.json").write_text(json.dumps(cfg))
    recon, stats = reconstruct(_entry(old), LAYER, x)
    np.testing.assert_allclose(recon, sparsify_reference(x, sparsify_tensors(n=2 * D_IN))[1], rtol=1e-4, atol=1e-4)
    assert stats["d_sae"] == 2 * D_IN
    # the first layout (the sae library before 2024-06-08): W_enc [d_in, d_sae] and b_enc, cfg.json without num_latents
    first = tmp_path / "first" / "layers.2"
    t2 = sparsify_tensors(n=2 * D_IN)
    write_sparsify(first, {"W_enc": t2["encoder.weight"].T.copy(), "b_enc": t2["encoder.bias"], "W_dec": t2["W_dec"],
                           "b_dec": t2["b_dec"]})
    (first / "cfg.json").write_text(json.dumps({"expansion_factor": 2, "normalize_decoder": True, "k": K, "d_in": D_IN}))
    check_sae_config(_entry(first), "s", LAYER, D_IN, "config.yaml")
    np.testing.assert_allclose(reconstruct(_entry(first), LAYER, x)[0], sparsify_reference(x, t2)[1], rtol=1e-4, atol=1e-4)
    # format: sparsify explicitly; the weights file or cfg.json named instead of the folder; trained seeds below it
    for path in (old / "sae.safetensors", old / "cfg.json"):
        check_sae_config(_entry(path, format="sparsify"), "s", LAYER, D_IN, "config.yaml")
    seeded = write_sparsify(tmp_path / "seeds" / "layers.2" / "seed1", t)
    assert sparsify_hook(seeded) == "blocks.2.hook_resid_post"
    with pytest.raises(CausalKLError) as e:
        check_sae_config(_entry(old, format="saelens"), "s", LAYER, D_IN, "config.yaml")
    _one_line_error(e, "format", "saelens", "sparsify")


def test_whole_context_reconstructor_is_the_route(tmp_path, x):
    """The whole-context splice and span routes rebuild the route with routes.reconstructors: the same SAE."""
    from causal_kl.routes.reconstructors import build_reconstructor

    folder = write_sparsify(tmp_path / "layers.2", sparsify_tensors())
    rebuilt = build_reconstructor(_entry(folder), LAYER, route="s", d_model=D_IN, device="cpu")
    assert rebuilt.reason is None
    np.testing.assert_allclose(rebuilt(x), sparsify_reference(x, sparsify_tensors())[1], rtol=1e-4, atol=1e-4)


def test_whole_context_scores_with_sparsify_itself(llama_dir, tmp_path):
    """SAELens' whole-context scores of a sparsify SAE read by the route (causal_kl.whole_context with the route's
    reconstructor) equal tests/test_whole_context.py's position-by-position reference splicing sparsify's own
    forward, on the tiny Llama."""
    sparsify = pytest.importorskip("sparsify")
    import fixtures
    from test_whole_context import N_CONTEXTS, N_CTX, reference_scores

    from causal_kl.models import load_model
    from causal_kl.routes.reconstructors import build_reconstructor
    from causal_kl.whole_context import draw_contexts, special_token_ids, whole_context_scores

    loaded = load_model(llama_dir)
    tok = loaded.tokenizer
    contexts = draw_contexts([tok(t)["input_ids"] for t in fixtures.make_texts(10, (40, 90), seed=3)], N_CTX, N_CONTEXTS,
                             seed=0, bos_id=tok.bos_token_id)
    torch.manual_seed(2)
    sc = sparsify.SparseCoder(loaded.d_model, sparsify.SparseCoderConfig(num_latents=4 * loaded.d_model, k=16))
    with torch.no_grad():  # a coder that reconstructs something: decoder = encoder directions, scaled
        sc.W_dec.copy_(sc.encoder.weight * 2.0)
    sc.save_to_disk(tmp_path / "layers.1")
    rebuilt = build_reconstructor(_entry(tmp_path / "layers.1"), 1, route="s", d_model=loaded.d_model, device="cpu")
    ours = whole_context_scores(loaded, contexts, 1, lambda h: torch.from_numpy(rebuilt(h.numpy())), special_token_ids(tok))
    with torch.no_grad():
        ref = reference_scores(llama_dir, contexts, 1, lambda h: sc(h.float()).sae_out, special_token_ids(tok))
    for key in ("kl_route", "kl_zero", "ce_clean", "ce_route", "ce_zero", "kl_div_score", "ce_loss_score"):
        assert ours[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-5), key
    assert ours["kl_route"] > 0


def test_folder_names(tmp_path):
    """The hookpoint is the folder's name: a release folder is refused with the folder to give; a folder whose name
    is no module says nothing (nothing checked, as a SAELens cfg.json without a hook); another module is refused."""
    t = sparsify_tensors()
    release = tmp_path / "sae-llama-3-8b-32x"
    for layer in (0, 1, 2):
        write_sparsify(release / f"layers.{layer}", t)
    with pytest.raises(CausalKLError) as e:
        check_sae_config(_entry(release), "s", LAYER, D_IN, "config.yaml")
    _one_line_error(e, "sae-llama-3-8b-32x", "a sparsify release", "layers.0, layers.1, layers.2", "layers.{layer}")
    renamed = write_sparsify(tmp_path / "my_sae", t)
    assert sparsify_hook(renamed) is None
    check_sae_config(_entry(renamed), "s", 5, D_IN, "config.yaml")
    mlp = write_sparsify(tmp_path / "rel" / "layers.2.mlp", t)
    assert sparsify_hook(mlp) == "blocks.2.hook_mlp_out"  # the MLP's output, in every family whose table has it there
    for call in (lambda e: check_sae_config(e, "s", LAYER, D_IN, "config.yaml"), lambda e: reconstruct(e, LAYER, np.random.default_rng(0).normal(size=(4, D_IN)))):
        for check_hook in (True, False):  # check_hook: false never moves an SAE to another kind of hook
            with pytest.raises(CausalKLError) as e:
                call(_entry(mlp, check_hook=check_hook))
            _one_line_error(e, "cfg.json", "hook_name", "layers.2.mlp", "not the output of a decoder block", "never to another hook")
            assert "check_hook: false to splice" not in str(e.value)
    for name, hook in (("embed_tokens", "embed_tokens"), ("h.4", "blocks.4.hook_resid_post"), ("layers.4", "blocks.4.hook_resid_post")):
        assert sparsify_hook(tmp_path / name) == hook


# -------------------------------------------------------------------------------- bad input
def _bad_cases(tmp):
    t = sparsify_tensors()
    good = write_sparsify(tmp / "good" / "layers.2", t)
    no_wdec = {k: v for k, v in t.items() if k != "W_dec"}
    cases = {
        "d_in": (good, ["cfg.json", "d_in", f"width is {D_IN + 1}"], LAYER, D_IN + 1),
        "other_layer": (good, ["cfg.json", "hook_name", "layer 3", "use it at layer 2", "check_hook"], 3, D_IN),
        "groupmax": (write_sparsify(tmp / "gm" / "layers.2", t, activation="groupmax"), ["cfg.json", "activation", "groupmax"], LAYER, D_IN),
        "transcoder": (write_sparsify(tmp / "tc" / "layers.2", t, transcode=True), ["cfg.json", "transcode", "transcoder"], LAYER, D_IN),
        "skip": (write_sparsify(tmp / "sk" / "layers.2", t, skip_connection=True), ["cfg.json", "skip_connection"], LAYER, D_IN),
        "signed": (write_sparsify(tmp / "sg" / "layers.2", t, signed=True), ["cfg.json", "signed"], LAYER, D_IN),
        "no_W_dec": (write_sparsify(tmp / "nodec" / "layers.2", no_wdec), ["sae.safetensors", "W_dec", "missing"], LAYER, D_IN),
        "short_bias": (write_sparsify(tmp / "sb" / "layers.2", {**t, "encoder.bias": t["encoder.bias"][:-1]}),
                       ["sae.safetensors", "encoder.bias", "shape", f"num_latents={D_SAE}"], LAYER, D_IN),
        "cfg_width": (write_sparsify(tmp / "cw" / "layers.2", t, d_in=D_IN + 2), ["sae.safetensors", "encoder.weight", f"d_in={D_IN + 2}"], LAYER, None),
        "big_k": (write_sparsify(tmp / "bk" / "layers.2", t, k=D_SAE + 1), ["cfg.json", "k", "num_latents"], LAYER, D_IN),
    }
    trunc = write_sparsify(tmp / "tr" / "layers.2", t)
    data = (trunc / "sae.safetensors").read_bytes()
    (trunc / "sae.safetensors").write_bytes(data[:-100])
    cases["truncated"] = (trunc, ["sae.safetensors", "truncated", "100 missing", "download the file again"], LAYER, D_IN)
    only_cfg = tmp / "oc" / "layers.2"
    only_cfg.mkdir(parents=True)
    (only_cfg / "cfg.json").write_text((good / "cfg.json").read_text())
    cases["no_weights"] = (only_cfg, ["sae.safetensors", "not found"], LAYER, D_IN)
    return cases


BAD = ["d_in", "other_layer", "groupmax", "transcoder", "skip", "signed", "no_W_dec", "short_bias", "cfg_width", "big_k",
       "truncated", "no_weights"]


@pytest.fixture(scope="module")
def bad_cases(tmp_path_factory):
    cases = _bad_cases(tmp_path_factory.mktemp("bad"))
    assert sorted(cases) == sorted(BAD)
    return cases


@pytest.mark.parametrize("case", BAD)
def test_errors_at_parse_time_and_at_load_time_agree(bad_cases, case):
    path, parts, layer, d_model = bad_cases[case]
    with pytest.raises(CausalKLError) as parsed:
        check_sae_config(_entry(path), "s", layer, d_model, "config.yaml")
    _one_line_error(parsed, *parts)
    golds = np.random.default_rng(0).normal(size=(5, d_model or D_IN)).astype(np.float32)
    with pytest.raises(CausalKLError) as loaded:
        reconstruct(_entry(path), layer, golds, "cpu", "config routes.s")
    _one_line_error(loaded, *parts)
    assert (parsed.value.file, parsed.value.field) == (loaded.value.file, loaded.value.field)
    assert parsed.value.problem.split(" (")[0] == loaded.value.problem.split(" (")[0]
