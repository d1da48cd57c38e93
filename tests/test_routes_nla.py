"""NLA routes on tiny fixture checkpoints in the NLA formats, against independent plain computations.

- AR: a tiny Gemma-3 cut to blocks 0..L + a value head + nla_meta.yaml. Reference: the *uncut*
  model's ``output_hidden_states[L + 1]`` at the last token (no final norm), times the head.
- AV: a tiny Gemma-3 whose tokenizer has the injection character and a chat template. Reference:
  greedy decoding by full forwards on ``input_ids`` with a hook that overwrites the embedding
  output at the injection token.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

import fixtures
from causal_kl.contracts import EXPLANATIONS, RECON
from causal_kl.errors import CausalKLError
from causal_kl.io import arrow_to_vectors, read_parquet
from causal_kl.jobs.recon import explain_nla_av, recon_nla_ar
from causal_kl.routes.nla_ar import load_ar, reconstruct
from causal_kl.routes.nla_av import explain, extract_explanation, load_av
from run_files import PROVENANCE, base_config, make_run

LAYER = 2
D = 64
INJECTION_CHAR = "㈎"
AV_TEMPLATE = "Describe the vector.\n<concept>{injection_char}</concept>\nAnswer in <explanation> tags."
AR_TEMPLATE = "Explanation: {explanation}\nThe vector:"
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
                 "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
EXPLANATIONS_TEXT = ["the model reads a state", "cache", "attention window of the prefix and the gold site 42", "."]


def write_meta(path: Path, **meta) -> None:
    (path / "nla_meta.yaml").write_text(yaml.safe_dump({"kind": "nla_model", "d_model": D, **meta}, allow_unicode=True))


@pytest.fixture(scope="module")
def ar_dir(gemma3_dir, tmp_path_factory):
    from transformers import AutoTokenizer, Gemma3ForCausalLM

    out = tmp_path_factory.mktemp("ar") / "ar"
    model = Gemma3ForCausalLM.from_pretrained(gemma3_dir)
    model.model.layers = model.model.layers[: LAYER + 1]
    model.config.num_hidden_layers = LAYER + 1
    model.config.layer_types = model.config.layer_types[: LAYER + 1]
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(gemma3_dir).save_pretrained(out)
    torch.manual_seed(7)
    save_file({"weight": torch.randn(D, D) / D ** 0.5}, str(out / "value_head.safetensors"))
    write_meta(out, role="ar", extraction={"mse_scale": 8.0}, prompt_templates={"ar": AR_TEMPLATE})
    return out


@pytest.fixture(scope="module")
def av_dir(tmp_path_factory):
    from transformers import Gemma3ForCausalLM

    out = tmp_path_factory.mktemp("av") / "av"
    tok = fixtures.make_tokenizer()
    tok.add_tokens([INJECTION_CHAR])
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(11)
    model = Gemma3ForCausalLM(fixtures.gemma3_text_config(len(tok)))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    ids = tok.apply_chat_template([{"role": "user", "content": AV_TEMPLATE.format(injection_char=INJECTION_CHAR)}],
                                  tokenize=True, add_generation_prompt=True)["input_ids"]
    inj = tok.convert_tokens_to_ids(INJECTION_CHAR)
    p = ids.index(inj)
    write_meta(out, role="av", tokens={"injection_char": INJECTION_CHAR, "injection_token_id": inj,
                                       "injection_left_neighbor_id": ids[p - 1], "injection_right_neighbor_id": ids[p + 1]},
               extraction={"injection_scale": 50.0}, prompt_templates={"av": AV_TEMPLATE})
    return out


def plain_ar(full_model_dir, ar_checkpoint, explanations):
    """Reference AR: uncut model, hidden_states[L+1] at the last token, one text at a time, times the head."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(full_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(full_model_dir)
    w = load_file(str(Path(ar_checkpoint) / "value_head.safetensors"))["weight"]
    out = []
    with torch.no_grad():
        for e in explanations:
            ids = torch.tensor([tok(AR_TEMPLATE.format(explanation=e))["input_ids"]])
            assert ids[0, 0] == tok.bos_token_id
            h = model(input_ids=ids, output_hidden_states=True).hidden_states[LAYER + 1][0, -1]
            out.append((w @ h).numpy())
    return np.stack(out)


def test_nla_ar_matches_plain_forward(gemma3_dir, ar_dir):
    ar = load_ar(ar_dir, LAYER, D)
    got = reconstruct(ar, EXPLANATIONS_TEXT, batch_size=3)  # mixed lengths in one batch: padding must not matter
    np.testing.assert_allclose(got, plain_ar(gemma3_dir, ar_dir, EXPLANATIONS_TEXT), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("case,field", [
    ("width", "d_model"), ("layer", "num_hidden_layers"), ("role", "role"), ("template", "prompt_templates.ar"),
    ("mse_scale", "extraction.mse_scale"), ("head", "value_head"), ("kind", "kind"),
])
def test_nla_ar_checkpoint_errors(ar_dir, tmp_path, case, field):
    import shutil

    ck = tmp_path / "ck"
    shutil.copytree(ar_dir, ck)
    meta = yaml.safe_load((ck / "nla_meta.yaml").read_text())
    layer, d = LAYER, D
    if case == "width":
        d = D * 2
    elif case == "layer":
        layer = LAYER + 1
    elif case == "role":
        meta["role"] = "av"
    elif case == "template":
        meta["prompt_templates"]["ar"] = "no placeholder"
    elif case == "mse_scale":
        del meta["extraction"]["mse_scale"]
    elif case == "head":
        (ck / "value_head.safetensors").unlink()
    elif case == "kind":
        meta["kind"] = "something"
    (ck / "nla_meta.yaml").write_text(yaml.safe_dump(meta, allow_unicode=True))
    with pytest.raises(CausalKLError) as e:
        load_ar(ck, layer, d)
    assert "\n" not in str(e.value) and field in str(e.value) and "Fix:" in str(e.value)


def plain_av_greedy(av_checkpoint, gold, n_new):
    """Reference AV: greedy decoding by full forwards on input_ids, embedding output overwritten by a hook."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    meta = yaml.safe_load((Path(av_checkpoint) / "nla_meta.yaml").read_text())
    tok = AutoTokenizer.from_pretrained(av_checkpoint)
    model = AutoModelForCausalLM.from_pretrained(av_checkpoint).eval()
    text = tok.apply_chat_template([{"role": "user", "content": AV_TEMPLATE.format(injection_char=INJECTION_CHAR)}],
                                   tokenize=False, add_generation_prompt=True)
    prompt = tok(text, add_special_tokens=False)["input_ids"]
    pos = prompt.index(meta["tokens"]["injection_token_id"])
    texts = []
    for g in gold:
        v = torch.from_numpy(g).double()
        v = (v / v.norm() * meta["extraction"]["injection_scale"]).float()

        def hook(_m, _i, out):
            out = out.clone()
            out[0, pos] = v
            return out

        handle = model.get_input_embeddings().register_forward_hook(hook)
        seq = list(prompt)
        with torch.no_grad():
            for _ in range(n_new):
                nxt = int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax())
                seq.append(nxt)
                if nxt == tok.eos_token_id:
                    break
        handle.remove()
        texts.append(tok.decode(seq[len(prompt):], skip_special_tokens=True))
    return texts


def test_nla_av_matches_plain_greedy(av_dir):
    gold = fixtures.random_vectors(3, D, seed=5) * 4
    av = load_av(av_dir, D)
    emb = av.loaded.model.get_input_embeddings()
    assert float(emb.embed_scale) == pytest.approx(D ** 0.5)  # Gemma scales inside embed_tokens: not again here
    got = explain(av, gold, max_new_tokens=6, batch_size=2)
    assert got == plain_av_greedy(av_dir, gold, 6)
    assert len(set(got)) > 1  # the injected vector steers the generation


def test_nla_av_sampling_is_seeded(av_dir):
    gold = fixtures.random_vectors(2, D, seed=6)
    av = load_av(av_dir, D)
    a = explain(av, gold, max_new_tokens=6, do_sample=True, seed=3)
    assert a == explain(av, gold, max_new_tokens=6, do_sample=True, seed=3)


def test_nla_av_neighbour_check(av_dir, tmp_path):
    import shutil

    ck = tmp_path / "ck"
    shutil.copytree(av_dir, ck)
    meta = yaml.safe_load((ck / "nla_meta.yaml").read_text())
    meta["tokens"]["injection_left_neighbor_id"] += 1
    (ck / "nla_meta.yaml").write_text(yaml.safe_dump(meta, allow_unicode=True))
    with pytest.raises(CausalKLError, match="neighbours"):
        load_av(ck, D)


def test_extract_explanation():
    assert extract_explanation("x <explanation> a b </explanation> y") == "a b"
    assert extract_explanation("<explanation>cut short") == "cut short"
    assert extract_explanation("  no tags ") == "no tags"


def test_nla_av_then_ar_end_to_end(gemma3_dir, ar_dir, av_dir, tmp_path):
    sites_path, gold_path, sites, gold = make_run(tmp_path, n_docs=2, per_doc=3, d=D)
    config = base_config(tmp_path, {"nla": {"kind": "nla_av", "checkpoint": str(av_dir), "ar_checkpoint": str(ar_dir),
                                            "max_new_tokens": 5, "batch_size": 4}}, layer=LAYER)
    entry, ex_path, recon_path = config["routes"]["nla"], str(tmp_path / "explanations.parquet"), str(tmp_path / "recon.parquet")
    explain_nla_av(sites=str(sites_path), gold=str(gold_path), checkpoint=[str(av_dir)], explanations=ex_path,
                   route_entry=entry, checkpoint_fingerprint=None, dtype="float32", device="cpu", seed=42, layer=str(LAYER),
                   route="nla",
                   provenance=PROVENANCE)
    recon_nla_ar(explanations=[ex_path], sites=str(sites_path), gold=str(gold_path), checkpoint=[str(ar_dir)],
                 recon=recon_path, route_entry=entry, checkpoint_fingerprint=None, explanations_fingerprint=None,
                 dtype="float32", device="cpu", layer=str(LAYER), route="nla",
                 provenance=PROVENANCE)
    ex = read_parquet(ex_path, EXPLANATIONS).to_pandas()
    assert ex.site_id.tolist() == sites.column("site_id").to_pylist()
    assert ex.generation.tolist() == plain_av_greedy(av_dir, gold, 5)
    recon = read_parquet(recon_path, RECON, D)
    assert recon.column("site_id").to_pylist() == sites.column("site_id").to_pylist()
    np.testing.assert_allclose(arrow_to_vectors(recon.column("reconstruction")),
                               plain_ar(gemma3_dir, ar_dir, ex.explanation.tolist()), atol=1e-4, rtol=1e-4)


def test_nla_ar_reads_nla_keyed_explanations(ar_dir, gemma3_dir, tmp_path):
    import pandas as pd

    sites_path, gold_path, sites, _ = make_run(tmp_path, n_docs=2, per_doc=2, d=D)
    s = sites.to_pandas()
    texts = [EXPLANATIONS_TEXT[i % len(EXPLANATIONS_TEXT)] for i in range(len(s))]
    pd.DataFrame({"doc_id": s.doc_id, "n_raw_tokens": s.position + 1, "explanation": texts}).iloc[::-1].to_parquet(tmp_path / "ex.parquet")
    config = base_config(tmp_path, {"ar": {"kind": "nla_ar", "checkpoint": str(ar_dir), "explanations": str(tmp_path / "ex.parquet")}},
                         layer=LAYER)
    recon_nla_ar(explanations=[str(tmp_path / "ex.parquet")], sites=str(sites_path), gold=str(gold_path),
                 checkpoint=[str(ar_dir)], recon=str(tmp_path / "recon.parquet"), route_entry=config["routes"]["ar"],
                 checkpoint_fingerprint=None, explanations_fingerprint=None, dtype="float32", device="cpu",
                 layer=str(LAYER), route="ar", provenance=PROVENANCE)
    got = arrow_to_vectors(read_parquet(tmp_path / "recon.parquet", RECON, D).column("reconstruction"))
    np.testing.assert_allclose(got, plain_ar(gemma3_dir, ar_dir, texts), atol=1e-4, rtol=1e-4)
