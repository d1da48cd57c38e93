"""The one safetensors header reader and dtype table (``causal_kl.checkpoints``), against the safetensors library."""

import pytest
import safetensors.torch as st
import torch

from causal_kl.checkpoints import SAFETENSORS_DTYPES, checkpoint_tensors, read_safetensors_header, safetensors_entries
from causal_kl.errors import CausalKLError


def test_the_dtype_table_is_safetensors_own():
    """Each row names the torch dtype and the width safetensors' torch binding gives that name."""
    for name, (torch_name, width) in SAFETENSORS_DTYPES.items():
        assert st._TYPES[name] == getattr(torch, torch_name), name
        assert st._SIZE[st._TYPES[name]] == width, name


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"b.f32": torch.randn(3, 5, generator=g), "a.bf16": torch.randn(7, generator=g).to(torch.bfloat16),
            "c.i64": torch.arange(6).reshape(2, 3), "d.u16": torch.arange(4).to(torch.uint16),
            "e.bool": torch.tensor([True, False, True]), "f.empty": torch.zeros(0, 4)}


def test_entries_locate_each_tensors_bytes(tmp_path):
    """Each entry's (file offset, byte count, dtype, shape) reads back the tensor safetensors itself loads."""
    f = tmp_path / "model.safetensors"
    st.save_file(_tensors(), str(f))
    entries = safetensors_entries(f)
    loaded = st.load_file(str(f))
    assert set(entries) == set(loaded)
    offsets = [e.offset for e in entries.values()]
    assert offsets == sorted(offsets)
    raw = f.read_bytes()
    for key, e in entries.items():
        want = loaded[key]
        assert e.shape == tuple(want.shape) and st._TYPES[e.dtype] == want.dtype
        if want.numel() == 0:
            assert e.nbytes == 0
            continue
        got = torch.frombuffer(bytearray(raw[e.offset:e.offset + e.nbytes]), dtype=want.dtype)
        assert torch.equal(got.reshape(want.shape), want), key


def test_a_cut_model_shard_is_one_line(tmp_path):
    """A truncated or garbled model shard: the checked header refuses it in one line, with the model's fix."""
    st.save_file(_tensors(), str(tmp_path / "model.safetensors"))
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-8])
    with pytest.raises(CausalKLError) as e:
        checkpoint_tensors(tmp_path)
    assert "truncated" in str(e.value) and "8 missing" in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "model.safetensors").write_bytes(b"\x05\0\0\0\0\0\0\0{oops")
    with pytest.raises(CausalKLError) as e:
        checkpoint_tensors(tmp_path)
    assert "not a readable safetensors file" in str(e.value) and "re-save the model with save_pretrained" in str(e.value)
    with pytest.raises(CausalKLError) as e:
        read_safetensors_header(tmp_path / "model.safetensors", "re-save the SAE weights with safetensors")
    assert "re-save the SAE weights with safetensors" in str(e.value)
