"""Atomic writes, provenance metadata, vector columns and contract checks."""
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from causal_kl.contracts import GOLD, PATCH
from causal_kl.errors import CausalKLError
from causal_kl.io import (arrow_to_vectors, atomic_path, provenance, read_parquet, read_provenance,
                          vectors_to_arrow, write_parquet)


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.parquet"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_parquet(tmp_path / "a.parquet", {"x": [1]})
    finally:
        os.umask(old)
    assert (tmp_path / "a.parquet").stat().st_mode & 0o777 == 0o644


def test_vectors_roundtrip_fixed_size_float32_with_provenance(tmp_path):
    v = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
    meta = provenance("abc", "m", stage="gold")
    write_parquet(tmp_path / "g.parquet", {"site_id": np.arange(5), "layer": [3] * 5, "activation": v}, GOLD, 7, meta)
    schema = pq.read_schema(tmp_path / "g.parquet")
    assert schema.field("activation").type == pa.list_(pa.float32(), 7)
    t = read_parquet(tmp_path / "g.parquet", GOLD, 7)
    np.testing.assert_array_equal(arrow_to_vectors(t["activation"]), v)
    p = read_provenance(tmp_path / "g.parquet")
    assert p["config_hash"] == "abc" and p["model"] == "m" and p["stage"] == "gold" and p["code_version"]


def test_contract_errors_name_file_and_column(tmp_path):
    write_parquet(tmp_path / "g.parquet", {"site_id": [0], "layer": [1], "activation": np.zeros((1, 4), np.float32)})
    with pytest.raises(CausalKLError, match=r"g.parquet: activation: vector width 4 != model width 8"):
        read_parquet(tmp_path / "g.parquet", GOLD, 8)
    with pytest.raises(CausalKLError, match=r"g.parquet: route: column missing from patch table"):
        read_parquet(tmp_path / "g.parquet", PATCH)
    with pytest.raises(CausalKLError, match="file not found"):
        read_parquet(tmp_path / "nope.parquet")
    ragged = pa.array([[1.0, 2.0], [1.0]], pa.list_(pa.float32()))
    with pytest.raises(CausalKLError, match="different widths"):
        arrow_to_vectors(ragged, "f", "v")
    assert vectors_to_arrow(np.zeros((2, 3))).type == pa.list_(pa.float32(), 3)


def test_a_truncated_parquet_says_delete_and_rerun(tmp_path):
    write_parquet(tmp_path / "g.parquet", {"site_id": [0, 1], "layer": [1, 1], "activation": np.zeros((2, 4), np.float32)})
    raw = (tmp_path / "g.parquet").read_bytes()
    (tmp_path / "g.parquet").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CausalKLError) as e:
        read_parquet(tmp_path / "g.parquet", GOLD)
    msg = str(e.value)
    assert "\n" not in msg and "g.parquet" in msg and "delete it and rerun" in msg


def test_fingerprint_follows_content_not_path_or_date(tmp_path):
    import hashlib
    import os

    from causal_kl.io import fingerprint

    f = tmp_path / "r.npy"
    f.write_bytes(b"one")
    first = fingerprint(f, tmp_path / "cache.json")
    assert first == hashlib.sha256(b"one").hexdigest()
    stamp = f.stat().st_mtime_ns
    f.write_bytes(b"two")
    os.utime(f, ns=(stamp - 10**9, stamp - 10**9))  # replaced by an older file: mtime alone would miss it
    assert fingerprint(f, tmp_path / "cache.json") == hashlib.sha256(b"two").hexdigest()
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "w.safetensors").write_bytes(b"x" * 10)
    a = fingerprint(d, None)
    (d / "config.json").write_text('{"a": 1}')
    assert fingerprint(d, None) != a
