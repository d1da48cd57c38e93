"""The loader finds decoder blocks, final norm and LM head on all three fixture kinds."""
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
    # an encoder that transformers will wrap as a "causal LM" still has no decoder blocks to patch
    BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)).save_pretrained(tmp_path / "bert")
    with pytest.raises(CausalKLError, match=r"bert: architecture: cannot find the decoder blocks"):
        load_model(tmp_path / "bert")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CausalKLError, match="not a Hugging Face model directory"):
        load_model(tmp_path / "empty")
