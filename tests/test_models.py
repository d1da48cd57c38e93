"""The loader finds decoder blocks, final norm and LM head on all fixture kinds; the fast load equals from_pretrained."""
import logging
import os
import re
import shutil

import pytest
import torch

from causal_kl.errors import CausalKLError
from causal_kl.models import load_model


@pytest.mark.parametrize("fixture, arch, n_layers", [
    ("gemma3_dir", "Gemma3ForCausalLM", 6),
    ("gemma3_mm_dir", "Gemma3ForConditionalGeneration", 6),
    ("llama_dir", "LlamaForCausalLM", 4),
])
def test_loader_finds_parts(fixture, arch, n_layers, request):
    path = request.getfixturevalue(fixture)
    m = load_model(path)
    assert m.architecture == arch and m.n_layers == n_layers
    ids = torch.tensor([m.tokenizer("the model reads a state").input_ids])
    out = m.model(input_ids=ids, output_hidden_states=True)
    # independent: the model's own hidden states and logits
    assert torch.allclose(out.hidden_states[-1], m.final_norm(_last_block(m, ids)), atol=1e-5)
    assert torch.allclose(out.logits, m.logits(out.hidden_states[-1] if False else _last_block(m, ids)), atol=1e-4)
    assert m.lm_head.weight.shape == (out.logits.shape[-1], m.d_model)


def _last_block(m, ids):
    got = {}
    h = m.layers[-1].register_forward_hook(lambda mod, i, o: got.setdefault("h", o[0] if isinstance(o, tuple) else o))
    m.model(input_ids=ids)
    h.remove()
    return got["h"]


def test_softcap_follows_the_model_forward(gemma3_dir, gemma3_mm_dir):
    # Gemma3ForCausalLM applies final_logit_softcapping; the multimodal wrapper's forward does not
    assert load_model(gemma3_dir).final_logit_softcapping == 30.0
    assert load_model(gemma3_mm_dir).final_logit_softcapping is None


def test_layer_out_of_range_is_one_line(gemma3_dir):
    m = load_model(gemma3_dir)
    with pytest.raises(CausalKLError, match=r"model.layer: layer 6 is out of range .*Fix: set model.layer"):
        m.check_layer(6)


def test_not_a_causal_lm(tmp_path):
    from transformers import BertConfig, BertModel, ViTConfig, ViTModel

    ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=28,
                       patch_size=14)).save_pretrained(tmp_path / "vit")
    with pytest.raises(CausalKLError, match=r"vit: config.json model_type: 'vit' .* is not a causal language model"):
        load_model(tmp_path / "vit")
    # an encoder that transformers will wrap as a "causal LM" is refused from its config, before any weight is read
    BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)).save_pretrained(tmp_path / "bert")
    with pytest.raises(CausalKLError, match=r"bert/config.json: model_type: .*bert is BertModel \('bert'\), an encoder: "
                                            r"causal-kl patches .* the families Gemma-3, .*GPT-2"):
        load_model(tmp_path / "bert")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CausalKLError, match="not a Hugging Face model directory"):
        load_model(tmp_path / "empty")


# ----------------------------------------------------------------------------- fast load and the resident-model cache
def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def _tied_groups(model) -> set[tuple[str, ...]]:
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(p.data_ptr(), []).append(name)
    return {tuple(sorted(g)) for g in groups.values() if len(g) > 1}


@pytest.mark.parametrize("fixture", ["gemma3_dir", "gemma3_mm_dir", "llama_dir", "qwen2_dir"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_load_is_bit_identical_to_from_pretrained(fixture, dtype, request):
    """Every parameter and buffer, bit for bit, and the same ties, against transformers' own from_pretrained."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from causal_kl.fast_load import fast_from_pretrained

    path = request.getfixturevalue(fixture)
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    ref_state, ref_buffers = ref.state_dict(), dict(ref.named_buffers())
    for in_place in (True, False):  # False: the device path (fresh tensors swapped in), run on the CPU
        got = fast_from_pretrained(str(path), AutoConfig.from_pretrained(path), dtype, torch.device("cpu"),
                                   threads=2, in_place=in_place)
        assert type(got) is type(ref)
        got_state, got_buffers = got.state_dict(), dict(got.named_buffers())
        assert list(got_state) == list(ref_state) and list(got_buffers) == list(ref_buffers)
        for name in list(ref_state) + list(ref_buffers):
            a = ref_state.get(name, ref_buffers.get(name))
            b = got_state.get(name, got_buffers.get(name))
            assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(_bits(a), _bits(b)), name
        assert _tied_groups(got) == _tied_groups(ref)
        assert got.generation_config.to_dict() == ref.generation_config.to_dict()


def test_fast_load_falls_back_for_bin_checkpoints_and_says_so(llama_dir, tmp_path, caplog, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("CAUSAL_KL_FAST_LOAD", "1")  # on the CPU load_model would not try it

    ref = AutoModelForCausalLM.from_pretrained(llama_dir)
    folder = tmp_path / "bin"
    folder.mkdir()
    for f in llama_dir.iterdir():
        if f.suffix != ".safetensors":
            (folder / f.name).write_bytes(f.read_bytes())
    torch.save(ref.state_dict(), folder / "pytorch_model.bin")
    with caplog.at_level(logging.INFO, logger="causal_kl.models"):
        m = load_model(folder)
    assert re.search(r"fast load not used for .*bin \(weights are bin files, not safetensors\): loading with from_pretrained",
                     caplog.text)
    for name, t in ref.state_dict().items():
        assert torch.equal(_bits(t), _bits(m.model.state_dict()[name])), name


def test_get_model_loads_once_reloads_a_changed_checkpoint_and_evicts_when_short_of_memory(gemma3_dir, tmp_path, caplog,
                                                                                           monkeypatch):
    from causal_kl import models

    monkeypatch.setenv("CAUSAL_KL_FAST_LOAD", "1")  # the GPU's path, on the CPU

    path = tmp_path / "model"
    shutil.copytree(gemma3_dir, path)
    models.evict_models()
    models.take_model_usage()  # what earlier tests of this process got is theirs
    load_lines = re.compile(r"causal-kl: loaded model (\S+) \((\w+), (\w+)\) in [\d.]+ s \[load #(\d+) in pid (\d+)\]")
    with caplog.at_level(logging.INFO, logger="causal_kl"):  # models' lines and fast_load's
        n0 = models.load_count()
        a = models.get_model(path)
        b = models.get_model(str(path) + "/")  # the same folder, spelled differently
        assert a is b and models.load_count() == n0 + 1
        assert len(load_lines.findall(caplog.text)) == 1 and "reusing resident model" in caplog.text
        assert len(re.findall(r"causal-kl: fast load of \S+ to cpu: [\d.]+ GB, \d+ tensors", caplog.text)) == 1
        assert load_lines.findall(caplog.text)[0][4] == str(os.getpid())
        # a rewritten weight file is a different model: reloaded, the stale copy dropped
        st = (path / "model.safetensors").stat()
        os.utime(path / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        c = models.get_model(path)
        assert c is not a and models.load_count() == n0 + 2 and "changed on disk" in caplog.text
        assert len(models.resident_models()) == 1
        # another dtype is another model; with room for both, both stay
        models.get_model(path, dtype="bfloat16")
        assert sorted(m["dtype"] for m in models.resident_models()) == ["bfloat16", "float32"]
        # no room (a reserve bigger than any machine): the resident ones go first
        monkeypatch.setenv("CAUSAL_KL_RESERVE_GB", "1e9")
        models.get_model(path, dtype="float64")
        assert [m["dtype"] for m in models.resident_models()] == ["float64"] and "evicting resident model" in caplog.text
        assert [u["dtype"] for u in models.take_model_usage()] == ["float32", "float32", "float32", "bfloat16", "float64"]
    assert models.evict_models() == 1 and models.resident_models() == []


def test_on_the_cpu_load_model_maps_the_file_by_default_and_logs_each_load(llama_dir, caplog, monkeypatch):
    monkeypatch.delenv("CAUSAL_KL_FAST_LOAD", raising=False)
    with caplog.at_level(logging.INFO, logger="causal_kl.models"):
        load_model(llama_dir, with_tokenizer=False)
    assert "with from_pretrained (on the CPU it maps the safetensors file" in caplog.text
    assert re.search(rf"causal-kl: loaded model {re.escape(str(llama_dir))} \(float32, cpu\) in [\d.]+ s \[load #\d+ in pid {os.getpid()}\]",
                     caplog.text)


@pytest.mark.parametrize("model_type", ["gemma", "qwen3_5", "gpt_oss", "qwen3_moe", "qwen3_5_moe"])
def test_fast_load_of_the_newer_families(model_type, family_dirs, caplog, monkeypatch):
    """Gemma 1, Qwen3.5 (its multimodal checkpoint built as the text decoder AutoModelForCausalLM makes of it) and
    gpt-oss: bit for bit what from_pretrained gives. The MoE checkpoints store each expert's weights apart and
    transformers fuses them on load: the fast loader declines, load_model says why and loads with from_pretrained."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from causal_kl.fast_load import FastLoadUnsupported, fast_from_pretrained

    path = family_dirs(model_type)
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ref_state = ref.state_dict()
    if model_type.endswith("moe"):
        with pytest.raises(FastLoadUnsupported, match="converted or initialised"):
            fast_from_pretrained(str(path), AutoConfig.from_pretrained(path), torch.float32, torch.device("cpu"))
        monkeypatch.setenv("CAUSAL_KL_FAST_LOAD", "1")
        with caplog.at_level(logging.INFO, logger="causal_kl.models"):
            got = load_model(path, with_tokenizer=False).model
        assert "fast load not used for" in caplog.text and "loading with from_pretrained" in caplog.text
    else:
        got = fast_from_pretrained(str(path), AutoConfig.from_pretrained(path), torch.float32, torch.device("cpu"),
                                   threads=2, in_place=False)
    assert type(got) is type(ref) and list(got.state_dict()) == list(ref_state)
    for name, t in ref_state.items():
        assert torch.equal(_bits(t), _bits(got.state_dict()[name])), name
    assert _tied_groups(got) == _tied_groups(ref)
