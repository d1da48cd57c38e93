"""Layer convention, stored golds (NLA base.parquet) and the re-extract check."""
import numpy as np
import pyarrow as pa
import pytest
import torch

from causal_kl.errors import CausalKLError
from causal_kl.gold import extract_golds, nla_base_table, read_nla_base, reextract_cos, reextract_summary
from causal_kl.models import load_model


@pytest.mark.parametrize("fixture", ["gemma3_dir", "gemma3_mm_dir", "llama_dir"])
def test_layer_L_is_hidden_states_L_plus_1(fixture, request):
    m = load_model(request.getfixturevalue(fixture))
    ids = m.tokenizer("the model reads a state and writes its next token " * 6).input_ids
    docs = {"d": ids}
    pos = [3, 17, len(ids) - 1]
    for L in (0, 2, m.n_layers - 1):
        got = extract_golds(m, docs, ["d"] * 3, pos, L)
        ref = m.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[L + 1][0, pos]
        if L == m.n_layers - 1:
            # HF's last entry has the final norm applied; block L's raw output is what we patch
            ref = _raw_last(m, ids)[pos]
        np.testing.assert_allclose(got, ref.numpy(), atol=1e-5)


def _raw_last(m, ids):
    got = {}
    h = m.layers[-1].register_forward_hook(lambda mod, i, o: got.setdefault("h", o[0] if isinstance(o, tuple) else o))
    m.model(input_ids=torch.tensor([ids]))
    h.remove()
    return got["h"][0]


def _sites(docs, pos):
    return pa.table({"site_id": list(range(len(pos))), "doc_id": docs, "position": pos})


def test_nla_base_roundtrip_and_reextract(tmp_path):
    rng = np.random.default_rng(0)
    vec = rng.standard_normal((4, 8)).astype(np.float32)
    sites = _sites(["c:s:1", "c:s:1", "c:s:2", "c:s:2"], [50, 60, 51, 70])
    t = nla_base_table(sites, {"c:s:1": list(range(100)), "c:s:2": list(range(100))}, vec, 3)
    assert t["n_raw_tokens"].to_pylist() == [51, 61, 52, 71]
    import pyarrow.parquet as pq

    pq.write_table(t.take([3, 0, 2, 1]), tmp_path / "base.parquet")  # stored in another order
    stored = read_nla_base(str(tmp_path / "base.parquet"), sites, 3, 8)
    # bf16 round trip: close, not equal; cos computed independently
    assert not np.array_equal(stored, vec)
    cos = reextract_cos(stored, vec)
    ref = [float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) for a, b in zip(stored.astype(np.float64), vec.astype(np.float64))]
    np.testing.assert_allclose(cos, ref, rtol=1e-12)
    s = reextract_summary(cos, 0.999)
    assert s["passed"] and s["min_cos"] == pytest.approx(min(ref))
    bad = vec.copy()
    bad[2] = -bad[2]
    assert not reextract_summary(reextract_cos(bad, vec), 0.999)["passed"]


def _write_base(path, **over):
    import pyarrow.parquet as pq

    vec = np.ones((2, 8), np.float32)
    cols = {"doc_id": ["c:s:1", "c:s:1"], "n_raw_tokens": [51, 61], "detokenized_text_truncated": ["", ""],
            "activation_vector": pa.FixedSizeListArray.from_arrays(pa.array(vec.ravel()), 8), "activation_layer": [3, 3]}
    cols.update(over)
    pq.write_table(pa.table(cols), path)
    return str(path)


@pytest.mark.parametrize("over, msg", [
    ({"activation_layer": [5, 5]}, r"activation_layer: stored golds are from layer\(s\) \[5\], the run patches layer 3"),
    ({"doc_id": ["c:s:9", "c:s:9"]}, r"doc_id/n_raw_tokens: no stored gold for site \(c:s:1, position 50\)"),
    ({"activation_vector": pa.FixedSizeListArray.from_arrays(pa.array(np.ones(12, np.float32)), 6)}, r"vector width 6 != model width 8"),
    ({"activation_vector": pa.FixedSizeListArray.from_arrays(pa.array(np.r_[np.ones(15), np.nan].astype(np.float32)), 8)}, r"1 vectors contain NaN or inf"),
])
def test_bad_base_parquet(tmp_path, over, msg):
    path = _write_base(tmp_path / "base.parquet", **over)
    with pytest.raises(CausalKLError, match=msg) as e:
        read_nla_base(path, _sites(["c:s:1", "c:s:1"], [50, 60]), 3, 8)
    assert str(e.value).startswith(path) and "Fix:" in str(e.value) and "\n" not in str(e.value)
