"""Every model family SAE users score, through the loader's family adapter and both patch paths.

Tiny random models of the added families (Gemma-2 with alternating sliding/global blocks, an
attention-logit soft-cap that bends and the final soft-cap; GPT-2 with learned absolute positions
and Conv1D projections; GPT-NeoX with parallel residual and Pythia's partial rotary; Mistral with a
sliding window in every block and no ``layer_types``; Qwen3), each compared with an independent
computation: the naive path (a full forward with a hook), the model's own hidden states and logits,
TransformerLens' own hook points for SAELens' hook names, and a plain forward for a workflow run of
the production config. Gemma-3, its multimodal wrapper, Llama and Qwen2 are held to the same
equalities in tests/test_patching.py (spans 1, 4, 16) and test_models.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from causal_kl import checks, families
from causal_kl.errors import CausalKLError
from causal_kl.gold import block_outputs
from causal_kl.models import load_model
from causal_kl.patching import (FAMILY_ABLATIONS, SiteVariants, clean_pass, fast_sites, naive_site, patch_document,
                                patch_documents)
from test_patching import LAYER, doc_and_sites, max_diff

ADDED = ["gemma2", "gpt2", "gpt_neox", "mistral", "qwen3", "gemma", "qwen3_moe", "gpt_oss"]
FAMILY = {"gemma2": "Gemma-2", "gpt2": "GPT-2", "gpt_neox": "GPT-NeoX/Pythia", "mistral": "Mistral", "qwen3": "Qwen3",
          "gemma": "Gemma", "qwen3_moe": "Qwen3-MoE", "gpt_oss": "gpt-oss", "qwen3_5": "Qwen3.5",
          "qwen3_5_moe": "Qwen3.5-MoE"}
TRAPS = {"gemma2": {"attn_softcap", "positions", "sliding_mask"}, "gpt_neox": {"positions"},
         "mistral": {"positions", "sliding_mask"}, "qwen3": {"positions"}, "gpt2": set(), "gemma": {"positions"},
         "qwen3_moe": {"positions"}, "gpt_oss": {"positions", "sliding_mask", "sinks"}}
"""The traps that must move the numbers when left out, per family; the others must not (GPT-2's blocks never read
positions: its learned positions were added at the input, so they are in the block-L states already)."""
CHECKED_TRAPS = sorted(FAMILY_ABLATIONS | {"sliding_mask"})


SITES = [0, 3, 5, 6, 8, 10]
"""Of ``doc_and_sites``' 11 sites, the ones kept here, on a document of about 110 tokens (CI time: the naive path
is a full forward per site): spans starting at 3, 23, 25 (the sliding-window edge, W = 24) and 47, 32 tokens
before the end, and ending at the document's last token."""


def family_sites(m, n_var: int, span: int, keep=SITES):
    ids, sites = doc_and_sites(m, n_var=n_var, span=span, n_words=(24, 26))
    assert len(ids) > 47 + 33 + span
    return ids, [sites[i] for i in keep]


@pytest.fixture(scope="module", params=ADDED)
def family_model(request, family_dirs):
    return request.param, load_model(family_dirs(request.param), dtype="float32")


@pytest.mark.parametrize("span", [1, 4])
def test_fast_equals_naive_float32(family_model, span):
    model_type, m = family_model
    assert m.family.name == FAMILY[model_type]
    ids, sites = family_sites(m, n_var=4, span=span)
    naive = [naive_site(m, ids, LAYER, s) for s in sites]
    fast = patch_document(m, ids, LAYER, sites, "fast", sites_per_batch=4)
    dk, dc = max_diff(fast, naive)
    assert dk < 1e-4 and dc < 1e-4, (dk, dc)
    assert max(float(np.nanmax(r.kl)) for r in naive if r.valid.any()) > 0.1  # the test has something to detect
    if span == 1:  # each family trap, left out, moves the numbers (and only where the family has it)
        state = clean_pass(m, ids, LAYER)
        for trap in CHECKED_TRAPS:
            moved = max_diff(fast_sites(m, ids, LAYER, sites, state, ablate={trap}), naive)[0]
            if trap in TRAPS[model_type]:
                assert moved > 1e-2, f"{model_type}: removing {trap} changed KL by only {moved}"
            else:
                assert moved < 1e-4, (model_type, trap, moved)


@contextlib.contextmanager
def float64_reference(model_type: str):
    """Gemma's RMSNorm computes in float32 and eager attention (Gemma-2 has no sdpa) does its softmax in float32,
    even for a float64 model; for the float64 exactness check both paths get them in the input's dtype (the
    method, not the model, is tested)."""
    if model_type != "gemma2":
        yield
        return
    from transformers.models.gemma2 import modeling_gemma2 as g

    norm, eager = g.Gemma2RMSNorm.forward, g.eager_attention_forward

    def norm64(self, x):
        return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)) * (1.0 + self.weight.to(x.dtype))

    def eager64(module, query, key, value, attention_mask, dropout=0.0, scaling=None, softcap=None, **kwargs):
        key, value = g.repeat_kv(key, module.num_key_value_groups), g.repeat_kv(value, module.num_key_value_groups)
        w = torch.matmul(query, key.transpose(2, 3)) * scaling
        if softcap is not None:
            w = torch.tanh(w / softcap) * softcap
        if attention_mask is not None:
            w = w + attention_mask
        w = torch.softmax(w, dim=-1)
        return torch.matmul(w, value).transpose(1, 2).contiguous(), w

    g.Gemma2RMSNorm.forward, g.eager_attention_forward = norm64, eager64
    try:
        yield
    finally:
        g.Gemma2RMSNorm.forward, g.eager_attention_forward = norm, eager


@pytest.mark.parametrize("model_type", ADDED)
def test_fast_equals_naive_float64(model_type, family_dirs):
    """Spans of 4 (their first position is a single-site splice's): the method is exact, 1e-9."""
    with float64_reference(model_type):
        m = load_model(family_dirs(model_type), dtype="float64")
        ids, sites = family_sites(m, n_var=3, span=4, keep=[3, 5, 10])
        naive = [naive_site(m, ids, LAYER, s) for s in sites]
        fast = patch_document(m, ids, LAYER, sites, "fast", sites_per_batch=3)
    dk, dc = max_diff(fast, naive)
    assert dk < 1e-9 and dc < 1e-9, (dk, dc)


NAIVE_ONLY = ["qwen3_5", "qwen3_5_moe"]
"""Families with linear-attention blocks: patched by the naive path (the window pass cannot carry their state)."""
ALL = ["gemma3_dir", "gemma3_mm_dir", "llama_dir", "qwen2_dir", *ADDED, *NAIVE_ONLY]


@pytest.mark.parametrize("name", ALL)
def test_layer_convention_and_parts_against_the_models_own_states(name, request, family_dirs):
    """Layer L = the output of block L = output_hidden_states[L + 1] (the last entry is after the final norm);
    the embeddings (token, and GPT-2's learned positions), final norm, head and soft-cap the adapter found give
    the model's own first hidden state and logits."""
    m = load_model(family_dirs(name) if name in ADDED + NAIVE_ONLY else request.getfixturevalue(name), dtype="float32")
    ids = m.tokenizer("the model reads a state and writes its next token").input_ids
    x = torch.tensor([ids])
    with torch.no_grad():
        out = m.model(input_ids=x, output_hidden_states=True)
        states = block_outputs(m, ids, list(range(m.n_layers)))
        embedded = m.embed_tokens(x)
        if m.embed_positions is not None:
            embedded = embedded + m.embed_positions(torch.arange(len(ids))[None])
        last = states[m.n_layers - 1]
        hidden = out.hidden_states
        assert len(hidden) == m.n_layers + 1
        for layer in range(m.n_layers - 1):
            torch.testing.assert_close(states[layer], hidden[layer + 1][0], rtol=0, atol=0)
        torch.testing.assert_close(m.final_norm(last), hidden[-1][0], rtol=0, atol=1e-6)
        if m.architecture != "Gemma3ForConditionalGeneration":  # its embedding input goes through the multimodal merge
            torch.testing.assert_close(embedded, hidden[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(m.logits(last), out.logits[0], rtol=0, atol=1e-4)
    assert (m.embed_positions is not None) == (name == "gpt2") and (m.rotary_emb is None) == (name == "gpt2")
    # the module paths transformers gives this model's blocks are read as those blocks' outputs (SAELens'
    # hf_hook_name, sparsify's hookpoints), a module inside a block as a module path, the token embedding as one
    from causal_kl.hooks import is_module_path
    from causal_kl.sae_format import parse_hook_name

    path_of = {id(module): path for path, module in m.model.named_modules()}
    for block, module in enumerate(m.layers):
        for hook in (path_of[id(module)], path_of[id(module)] + ".output"):
            site = parse_hook_name(hook)
            assert (site.kind, site.layer) == ("resid_post", block), hook
        assert all(is_module_path(f"{path_of[id(module)]}.{child}.output") for child, _ in module.named_children())
    assert parse_hook_name(path_of[id(m.embed_tokens)].rsplit(".", 1)[-1]).kind == "embed"


@pytest.mark.parametrize("model_type", ["gpt2", "gpt_neox", "gemma2", "gemma", "qwen3_moe", "gpt_oss"])
def test_saelens_hook_names_are_our_layers_peer_transformer_lens(model_type, family_dirs):
    """SAELens' hook names (``blocks.L.hook_resid_post`` = layer L; ``blocks.L.hook_resid_pre`` = layer L - 1)
    against TransformerLens' own hook points on the same checkpoint (the model SAELens runs): the states there
    are the block outputs the engine patches."""
    bridge_mod = pytest.importorskip("transformer_lens.model_bridge")
    from causal_kl.sae_format import parse_hook_name

    path = family_dirs(model_type)
    m = load_model(path, dtype="float32")
    ids = m.tokenizer("the model reads a state and writes its next token").input_ids
    bridge = bridge_mod.TransformerBridge.boot_transformers(str(path), device="cpu", dtype=torch.float32)
    with torch.no_grad():
        _, cache = bridge.run_with_cache(torch.tensor([ids]))
    states = block_outputs(m, ids, list(range(m.n_layers)))
    checked = 0
    for block in range(m.n_layers):
        for hook in (f"blocks.{block}.hook_resid_post", f"blocks.{block}.hook_resid_pre"):
            site = parse_hook_name(hook)
            assert site.layer == (block if hook.endswith("post") else (block - 1 if block else None))
            if site.layer is not None:
                torch.testing.assert_close(states[site.layer], cache[hook][0], rtol=0, atol=1e-6)
                checked += 1
    assert checked == 2 * m.n_layers - 1


# ----------------------------------------------------------------------------- attention implementation
def test_attention_implementation_is_one_the_model_supports(family_dirs):
    """auto: sdpa where transformers has it, else eager (Gemma-2); another must be offered (one line if not)."""
    assert load_model(family_dirs("gemma2"), with_tokenizer=False).attn_implementation == "eager"
    assert load_model(family_dirs("gpt2"), with_tokenizer=False).attn_implementation == "sdpa"
    assert load_model(family_dirs("gpt2"), attn_implementation="eager", with_tokenizer=False).attn_implementation == "eager"
    with pytest.raises(CausalKLError) as e:
        load_model(family_dirs("gemma2"), attn_implementation="sdpa")
    msg = str(e.value)
    assert "\n" not in msg and re.search(r"model.attn_implementation: Gemma2ForCausalLM does not offer attn_implementation "
                                         r"'sdpa' in transformers 5\.\S+ \(it offers eager, .*\)\. Fix: ", msg), msg


def run_config(model_dir: Path, corpus: Path, **model) -> dict:
    from causal_kl.config import validate_config

    cfg = {"run": "t", "device": "cpu", "corpus": {"name": "c", "path": str(corpus), "column": "content", "rows": [0, 4]},
           "model": {"path": str(model_dir), "layer": 2, **model}}
    return validate_config(cfg, "run.yaml")


def test_attn_implementation_checked_at_parse_time(family_dirs, corpus_path):
    gemma2 = family_dirs("gemma2")
    for ok in ("auto", "eager", "flash_attention_2"):
        checks.check_run(run_config(gemma2, corpus_path, attn_implementation=ok), "run.yaml", local_exec=False)
    assert run_config(gemma2, corpus_path)["model"]["attn_implementation"] == "auto"  # the schema's default
    with pytest.raises(CausalKLError) as e:
        checks.check_run(run_config(gemma2, corpus_path, attn_implementation="sdpa"), "run.yaml", local_exec=False)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("run.yaml: model.attn_implementation: Gemma2ForCausalLM does not offer") \
        and "Fix: set model.attn_implementation to one of eager" in msg, msg
    with pytest.raises(CausalKLError, match=r"run.yaml: model.attn_implementation: got 'sdpa2'\. Fix: .*'auto'"):
        run_config(gemma2, corpus_path, attn_implementation="sdpa2")


# ----------------------------------------------------------------------------- refused at parse time
REFUSED = {
    "t5": ({"architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "is_encoder_decoder": True,
            "num_layers": 4}, "T5ForConditionalGeneration ('t5'), an encoder-decoder"),
    "bert": ({"architectures": ["BertLMHeadModel"], "model_type": "bert", "num_hidden_layers": 4},
             "BertLMHeadModel ('bert'), an encoder"),
    "unknown": ({"architectures": ["BloomForCausalLM"], "model_type": "bloom", "n_layer": 4},
                "BloomForCausalLM ('bloom'), a block layout causal-kl does not know"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_family_we_cannot_patch_is_one_line_at_parse_time(case, tmp_path, corpus_path):
    """Read from config.json alone (no weights in the folder): the model, its class and the families we patch."""
    model_config, words = REFUSED[case]
    folder = tmp_path / case
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(model_config))
    with pytest.raises(CausalKLError) as e:
        checks.check_run(run_config(folder, corpus_path), "run.yaml", local_exec=False)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{folder}/config.json: model_type: {folder} is {words}: "), msg
    assert f"the families {families.supported()}" in msg and "Gemma-2" in msg and "GPT-NeoX/Pythia" in msg and "Fix:" in msg


def test_every_family_has_a_row_in_the_readme(root):
    """The README's table of families names each family the adapter knows (and what was tested on it)."""
    text = (root / "README.md").read_text()
    table = text[text.index("| family |"):]
    rows = [ln for ln in table.splitlines() if ln.startswith("|")]
    for family in families.FAMILIES:
        assert any(ln.startswith(f"| {family.name} ") for ln in rows), family.name


# ----------------------------------------------------------------------------- sliding windows without layer_types
def test_mistral_window_in_every_block(family_dirs):
    m = load_model(family_dirs("mistral"), with_tokenizer=False)
    assert m.sliding_window == 24 and m.layer_types == ["sliding_attention"] * m.n_layers


def test_a_model_the_fast_path_cannot_run_falls_back_to_naive_and_says_so_once(family_dirs, caplog):
    """A model whose blocks attend with another window than the engine expects (here: Mistral's per-block window
    hidden from it) is patched by the naive path, with one line in the log, never an error asking for a fix."""
    m = load_model(family_dirs("mistral"), dtype="float32")
    ids, sites = doc_and_sites(m, n_var=3, span=1)
    sites = sites[5:8]
    naive = [naive_site(m, ids, LAYER, s) for s in sites]
    m.layer_types = None  # as before the family adapter: every block taken for a global one
    with caplog.at_level(logging.INFO, logger="causal_kl.patching"):
        got = patch_documents(m, [(ids, sites)], LAYER, "fast", sites_per_batch=2)[0]
    lines = [r.getMessage() for r in caplog.records if "fast path cannot run" in r.getMessage()]
    assert len(lines) == 1 and "attends with sliding window 24" in lines[0] and "naive path" in lines[0], lines
    for x, y in zip(got, naive):
        np.testing.assert_array_equal(x.kl, y.kl)


# ----------------------------------------------------------------------------- the production config, per family
WORKFLOW_FAMILIES = ["gemma2", "gpt2", "gpt_neox", "mistral"]
FLOORS = "results/{run}/L2/span1/patch/floors.parquet"


@pytest.fixture(scope="module")
def family_runs(tmp_path_factory, family_dirs, corpus_path, root):
    """config/gemma3-27b.yaml with the model, layer 2 and the corpus overridden (as a user tries a family), run by
    Snakemake to the floors of its one shard, once per family: two runs at a time, each in its own copy of the
    workflow with its own runtime dir (its own model server and slot locks). Returns {family: (workdir, error)}."""
    import shutil
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    from workflow_helpers import copy_workflow, run_snakemake

    runs = {}
    for model_type in WORKFLOW_FAMILIES:
        wd = copy_workflow(tmp_path_factory.mktemp(f"wf_{model_type}"))
        shutil.copy(corpus_path, wd / "corpus.parquet")
        cfg = yaml.safe_load((root / "config/gemma3-27b.yaml").read_text())
        cfg.update(run=model_type, device="cpu", dtype="float32")
        cfg["model"].update(path=str(family_dirs(model_type)), layer=2)
        cfg["corpus"].update(path="corpus.parquet", rows=[0, 2])
        cfg["sites"].update(positions_per_doc=1, max_length=200, max_sites=2, shard_size=2)
        (wd / "run.yaml").write_text(yaml.safe_dump(cfg))
        runs[model_type] = wd
    runtime = Path(tempfile.mkdtemp(prefix="ckl-fam-"))  # short: server socket names are built from it

    def run(model_type: str) -> tuple[Path, str | None]:
        wd = runs[model_type]
        try:
            run_snakemake(wd, FLOORS.format(run=model_type), "--configfile", "run.yaml", timeout=600,
                          env={"CAUSAL_KL_RUNTIME_DIR": str(runtime / model_type)})
        except AssertionError as e:
            return wd, str(e)
        return wd, None

    with ThreadPoolExecutor(max_workers=2) as pool:
        done = dict(zip(WORKFLOW_FAMILIES, pool.map(run, WORKFLOW_FAMILIES)))
    yield done
    shutil.rmtree(runtime, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("model_type", WORKFLOW_FAMILIES)
def test_production_config_runs_on_each_family(model_type, family_runs, family_dirs):
    """The model loads with an attention implementation it supports, golds are extracted and the fast path patches
    in the model server; the zero-ablation KL at offset 0 equals a plain forward of the model with block 2's output
    zeroed at the site, and the re-patched gold is at the floor."""
    import pandas as pd

    from causal_kl.io import read_docs, read_sites

    wd, error = family_runs[model_type]
    assert error is None, error
    rows = pd.read_parquet(wd / FLOORS.format(run=model_type))
    sites = read_sites(wd / f"results/{model_type}/sites.parquet").to_pandas()
    docs = read_docs(wd / f"results/{model_type}/docs.parquet")
    assert len(sites) == 2 and set(rows["site_id"]) == set(sites["site_id"])
    at0 = rows[rows["offset"] == 0].set_index(["site_id", "condition"])
    m = load_model(family_dirs(model_type), dtype="float32")
    for site in sites.itertuples():
        ids = torch.tensor([docs[site.doc_id][: site.position + 1]])
        with torch.no_grad():
            clean = torch.log_softmax(m.model(input_ids=ids).logits[0, -1].float(), -1)
            hook = m.layers[2].register_forward_hook(lambda _m, _i, out, p=site.position: _zero_at(out, p))
            try:
                zeroed = torch.log_softmax(m.model(input_ids=ids).logits[0, -1].float(), -1)
            finally:
                hook.remove()
        kl_zero = float((clean.exp() * (clean - zeroed)).sum())
        assert at0.loc[(site.site_id, "zero"), "kl"] == pytest.approx(kl_zero, rel=1e-4, abs=1e-5)
        assert kl_zero > 1e-2 and at0.loc[(site.site_id, "gold"), "kl"] < 1e-5
    server_log = (wd / f"logs/{model_type}/model_server.log").read_text()
    assert f"({FAMILY[model_type]} family), attention implementation {'eager' if model_type == 'gemma2' else 'sdpa'}" \
        in server_log, server_log[-2000:]


def _zero_at(out, p):
    hidden = (out[0] if isinstance(out, tuple) else out).clone()
    hidden[:, p] = 0
    return (hidden, *out[1:]) if isinstance(out, tuple) else hidden


def test_a_route_hook_the_family_lacks_is_one_line_at_parse_time(tmp_path, corpus_path):
    """Read from config.json alone: a parallel-residual GPT-NeoX block has no resid_mid; its mlp_out is fine."""
    folder = tmp_path / "neox"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox",
                                                    "num_hidden_layers": 4, "use_parallel_residual": True}))
    route = {"kind": "pca", "train_rows": [20, 30]}
    cfg = run_config(folder, corpus_path)
    cfg["routes"] = {"mid": {**route, "hook": "resid_mid"}}
    with pytest.raises(CausalKLError) as e:
        checks.check_run(_validated(cfg), "run.yaml", local_exec=False)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("run.yaml: routes.mid.hook: ") and "has no hook resid_mid" in msg, msg
    assert "mlp_out" in msg and "Fix:" in msg
    cfg["routes"] = {"out": {**route, "hook": "mlp_out"}}
    checks.check_run(_validated(cfg), "run.yaml", local_exec=False)
    # a text channel reads its vectors as the residual stream (the logit lens): never at a hook inside a block
    cfg["routes"] = {"tc": {"kind": "text_channel", "train_rows": [20, 30], "hook": "mlp_out"}}
    with pytest.raises(CausalKLError) as e:
        checks.check_run(_validated(cfg), "run.yaml", local_exec=False)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("run.yaml: routes.tc.hook: ") and "residual stream" in msg, msg


def test_qwen3_5_has_no_attn_z_one_line_at_parse_time(tmp_path, corpus_path):
    """Read from a multimodal Qwen3.5 config.json alone (the text decoder's settings under text_config)."""
    folder = tmp_path / "qwen3_5"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["Qwen3_5ForConditionalGeneration"], "model_type": "qwen3_5",
        "text_config": {"model_type": "qwen3_5_text", "num_hidden_layers": 4,
                        "layer_types": ["linear_attention", "linear_attention", "linear_attention", "full_attention"]}}))
    cfg = run_config(folder, corpus_path)
    cfg["routes"] = {"z": {"kind": "pca", "train_rows": [20, 30], "hook": "attn_z"}}
    with pytest.raises(CausalKLError) as e:
        checks.check_run(_validated(cfg), "run.yaml", local_exec=False)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("run.yaml: routes.z.hook: ") and "(Qwen3.5) has no hook attn_z" in msg, msg
    assert "linear-attention blocks have no attention heads" in msg and "attn_out" in msg and "Fix:" in msg, msg
    cfg["routes"] = {"out": {"kind": "pca", "train_rows": [20, 30], "hook": "attn_out"}}
    checks.check_run(_validated(cfg), "run.yaml", local_exec=False)


def _validated(cfg: dict) -> dict:
    from causal_kl.config import validate_config

    return validate_config(cfg, "run.yaml")


# ----------------------------------------------------------------------------- linear attention: the naive path, said
@pytest.mark.parametrize("model_type", NAIVE_ONLY)
def test_linear_attention_families_run_the_naive_path_and_say_so(model_type, family_dirs, caplog):
    """Qwen3.5 (the multimodal checkpoint, loaded as its text decoder) and Qwen3.5-MoE: the fast path cannot carry a
    linear-attention block's recurrent state, so ``fast`` patches with the naive path, one log line per call naming
    the blocks, ``method_used`` says naive; the numbers are a plain forward's with block L's output replaced (a hook
    registered here, KL computed here with torch)."""
    m = load_model(family_dirs(model_type), dtype="float32")
    assert m.family.name == FAMILY[model_type] and m.architecture in ("Qwen3_5ForCausalLM", "Qwen3_5MoeForCausalLM")
    assert m.layer_types == ["linear_attention", "full_attention"] * 2 and m.rotary_emb is not None
    ids, sites = family_sites(m, n_var=3, span=1, keep=[3, 8])
    with caplog.at_level(logging.INFO, logger="causal_kl.patching"):
        got = patch_documents(m, [(ids, sites)], LAYER, "fast", sites_per_batch=2)[0]
        patch_documents(m, [(ids, sites[:1])], LAYER, "fast")
    lines = [r.getMessage() for r in caplog.records if "fast path cannot run" in r.getMessage()]
    assert len(lines) == 2 and "linear-attention blocks (0, 2)" in lines[0] and "naive path" in lines[0], lines
    from causal_kl.patching import method_used

    assert method_used(m, "fast") == "naive" and method_used(m, "naive") == "naive"
    for site, res in zip(sites, got):
        p = site.position
        x = torch.tensor([ids[: min(len(ids), p + 32)]])

        def put(_mod, _inp, out, v):
            h = (out[0] if isinstance(out, tuple) else out).clone()
            h[:, p] = v
            return (h, *out[1:]) if isinstance(out, tuple) else h

        with torch.no_grad():
            clean = torch.log_softmax(m.model(input_ids=x).logits[0, p:].double(), -1)
            for v in (1, 2):  # a perturbed state, zero (variant 0, the clean state, is the pass-through)
                handle = m.layers[LAYER].register_forward_hook(lambda mod, i, o, v=v: put(mod, i, o, site.vectors[v]))
                try:
                    patched = torch.log_softmax(m.model(input_ids=x).logits[0, p:].double(), -1)
                finally:
                    handle.remove()
                kl = (clean.exp() * (clean - patched)).sum(-1).numpy()
                n = len(kl) - (1 if x.shape[1] == len(ids) else 0)  # the last position has no next token
                np.testing.assert_allclose(res.kl[v, :n], kl[:n], rtol=1e-4, atol=1e-5)
        assert float(np.nanmax(res.kl[2])) > 0.1  # zero at block L moves the model: there is something to compare


def test_provenance_records_the_method_that_ran(family_dirs, tmp_path):
    """The floors job of a shard, run in this process: asked for ``fast``, a Qwen3.5 model's floors say ``method:
    naive`` and why; gpt-oss's (whose fast path runs) say ``fast``; the aggregate of the shards says the same. The
    zero condition's KL is the naive path's."""
    import pyarrow as pa

    from causal_kl.contracts import DOCS
    from causal_kl.io import read_provenance, write_parquet
    from causal_kl.jobs.patch import conditions, patch_floors, patch_floors_aggregate
    from run_files import write_gold, write_sites

    for model_type, want in (("qwen3_5", "naive"), ("gpt_oss", "fast")):
        d = tmp_path / model_type
        d.mkdir()
        m = load_model(family_dirs(model_type), dtype="float32")
        ids, _ = family_sites(m, n_var=3, span=1)
        docs = {"a": ids, "b": ids[5:90]}
        positions = [30, 60]
        write_sites(d / "sites.parquet", ["a", "b"], positions)
        write_parquet(d / "docs.parquet", pa.table({"doc_id": list(docs), "row": pa.array([0, 1], pa.int64()),
                                                    "n_tokens": pa.array([len(t) for t in docs.values()], pa.int64()),
                                                    "input_ids": pa.array(list(docs.values()), pa.list_(pa.int32()))}), DOCS)
        golds = np.stack([block_outputs(m, docs[doc], [LAYER])[LAYER][p].numpy() for doc, p in zip(docs, positions)])
        write_gold(d / "gold.parquet", golds, layer=LAYER)
        prov = {"config_hash": "h", "model": str(family_dirs(model_type))}
        files = {k: str(d / f"{k}.parquet") for k in ("sites", "docs", "gold", "choices", "mean", "noise", "floors")}
        conditions(files["gold"], files["sites"], files["choices"], files["mean"], files["noise"], 0, str(LAYER), prov)
        patch_floors(sites=files["sites"], docs=files["docs"], gold=files["gold"], choices=files["choices"],
                     mean=files["mean"], span_gold=[], model_dir=[], floors=files["floors"],
                     model={"path": str(family_dirs(model_type))}, model_fingerprint=None,
                     patch={"method": "fast", "sites_per_batch": "auto"}, dtype="float32", device="cpu",
                     layer=str(LAYER), span="1", shard="0", provenance=prov)
        meta = read_provenance(files["floors"])
        assert meta["method"] == want, meta
        if want == "naive":
            assert meta["method_asked"] == "fast" and "linear-attention blocks" in meta["fast_path_unavailable"], meta
        else:
            assert "method_asked" not in meta and "fast_path_unavailable" not in meta, meta
        patch_floors_aggregate([files["floors"]], str(d / "all.parquet"), str(LAYER), "1", prov)
        assert {k: v for k, v in read_provenance(d / "all.parquet").items() if k in meta and k not in ("created_utc", "code_version")} == \
            {k: v for k, v in meta.items() if k in ("config_hash", "model", "method", "method_asked", "fast_path_unavailable")}
        import pandas as pd

        rows = pd.read_parquet(files["floors"]).set_index(["site_id", "condition", "offset"])
        for i, (doc, p) in enumerate(zip(docs, positions)):
            zero = SiteVariants(i, p, ["zero"], torch.zeros(1, m.d_model))
            ref = naive_site(m, docs[doc], LAYER, zero)
            assert rows.loc[(i, "zero", 0), "kl"] == pytest.approx(float(ref.kl[0, 0]), rel=1e-4, abs=1e-6)
