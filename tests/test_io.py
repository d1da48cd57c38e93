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


def test_one_json_reader_for_pipeline_files_and_sae_configs(tmp_path):
    """``read_json``: the object ``json`` reads; a missing, broken or non-object file is one line, its fix the
    caller's (an SAE config: re-save it) or, by default, a pipeline file's (build it / delete it and rerun)."""
    import json

    from causal_kl.io import read_json

    good = {"a": [1, 2.5, None], "b": {"c": "d"}}
    (tmp_path / "good.json").write_text(json.dumps(good))
    assert read_json(tmp_path / "good.json") == json.loads((tmp_path / "good.json").read_text())
    (tmp_path / "broken.json").write_text('{"a": ')
    (tmp_path / "list.json").write_text("[1, 2]")
    for name, problem, default_fix in (("missing.json", "file not found", "build it with snakemake"),
                                       ("broken.json", "not valid JSON", "delete the file and rerun snakemake"),
                                       ("list.json", "is not a JSON object", "delete the file and rerun snakemake")):
        for fix in (None, "re-save the SAE config"):
            with pytest.raises(CausalKLError) as e:
                read_json(tmp_path / name, fix)
            msg = str(e.value)
            assert "\n" not in msg and name in msg and problem in msg and (fix or default_fix) in msg, msg


def test_fingerprint_follows_content_not_path_or_date(tmp_path):
    import hashlib
    import os

    from causal_kl.io import content_fingerprint

    f = tmp_path / "r.npy"
    f.write_bytes(b"one")
    first = content_fingerprint(f, tmp_path / "cache.json")
    assert first == hashlib.sha256(b"one").hexdigest()
    stamp = f.stat().st_mtime_ns
    f.write_bytes(b"two")
    os.utime(f, ns=(stamp - 10**9, stamp - 10**9))  # replaced by an older file: mtime alone would miss it
    assert content_fingerprint(f, tmp_path / "cache.json") == hashlib.sha256(b"two").hexdigest()
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "w.safetensors").write_bytes(b"x" * 10)
    a = content_fingerprint(d, None)
    (d / "config.json").write_text('{"a": 1}')
    assert content_fingerprint(d, None) != a


# ---------------------------------------------------------------------------- aggregates and readers at scale
def _strings(table: pa.Table) -> pa.Table:
    """``table`` without metadata and with its dictionary columns decoded, for comparing contents."""
    table = table.replace_schema_metadata(None)
    return pa.table({n: (c.cast(c.type.value_type) if pa.types.is_dictionary(c.type) else c)
                     for n, c in zip(table.column_names, table.columns)})


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """A synthetic layer as shards (10 sites each, spans 1 and 3, one route), one floors shard rewritten the way older
    code wrote it (plain strings) and an empty route shard added."""
    from synthetic_results import make_results

    R = make_results(tmp_path_factory.mktemp("sharded"), routes=("toy",), n_docs=12, per_doc=8, d=8, spans=(1, 3),
                     shard_size=10)
    old = R / "span1/patch/floors/shard_003.parquet"
    t = pq.read_table(old)
    pq.write_table(_strings(t), old)
    empty = R / "span1/patch/toy/shard_999.parquet"
    write_parquet(empty, PATCH.schema().empty_table(), PATCH)
    return R


def test_aggregates_stream_the_shards_unchanged(sharded, tmp_path, monkeypatch):
    """Each aggregate equals pyarrow's own concatenation of its shards, row for row, written as several row groups
    (route and condition dictionary-encoded), with its provenance; empty gold shards are left out."""
    import causal_kl.io as io
    from causal_kl.contracts import SPAN_GOLD
    from causal_kl.jobs.gold import gold_aggregate
    from causal_kl.jobs.patch import patch_floors_aggregate, patch_route_aggregate
    from causal_kl.jobs.spans import span_gold_aggregate

    monkeypatch.setattr(io, "ROW_GROUP_BYTES", 4000)  # a few shards per row group
    R = sharded
    prov = {"config_hash": "h", "run": "syn", "model": "m", "layer": 3, "rule": "test"}
    for k in (1, 3):
        floors = sorted((R / f"span{k}/patch/floors").glob("shard_*.parquet"))
        patch_floors_aggregate(shards=[str(p) for p in floors], patch=str(tmp_path / f"f{k}.parquet"), layer="3",
                               span=str(k), provenance=prov)
        route = sorted((R / f"span{k}/patch/toy").glob("shard_*.parquet"))
        patch_route_aggregate(shards=[str(p) for p in route], patch=str(tmp_path / f"r{k}.parquet"), layer="3",
                              route="toy", span=str(k), provenance=prov)
        for out, shards in ((f"f{k}.parquet", floors), (f"r{k}.parquet", route)):
            got = pq.read_table(tmp_path / out)
            want = pa.concat_tables([_strings(pq.read_table(p)) for p in shards])
            assert _strings(got).equals(want) and got.num_rows == want.num_rows > 0
            assert got.schema.field("route").type == pa.dictionary(pa.int32(), pa.string())
            assert got.schema.field("condition").type == pa.dictionary(pa.int32(), pa.string())
            assert pq.ParquetFile(tmp_path / out).metadata.num_row_groups > 1
            assert read_provenance(tmp_path / out)["rule"] == "test"
    assert read_provenance(tmp_path / "r1.parquet")["route"] == "toy"

    golds = sorted((R / "gold").glob("shard_*.parquet"))
    empty = tmp_path / "gold_empty.parquet"
    write_parquet(empty, {"site_id": pa.array([], pa.int64()), "layer": pa.array([], pa.int64()),
                          "activation": pa.array([], pa.list_(pa.float32(), 1))})
    gold_aggregate(shards=[str(golds[0]), str(empty), *map(str, golds[1:])], gold=str(tmp_path / "gold.parquet"),
                   layer="3", provenance=prov)
    got = pq.read_table(tmp_path / "gold.parquet")
    want = pa.concat_tables([pq.read_table(p).replace_schema_metadata(None) for p in golds])
    assert got.replace_schema_metadata(None).equals(want)
    np.testing.assert_array_equal(arrow_to_vectors(got["activation"]), arrow_to_vectors(want["activation"]))
    span = sorted((R / "span3/gold").glob("shard_*.parquet"))
    span_gold_aggregate(shards=[str(p) for p in span], gold=str(tmp_path / "span.parquet"), layer="3", span="3",
                        provenance=prov)
    got = read_parquet(tmp_path / "span.parquet", SPAN_GOLD, 8)
    assert got.replace_schema_metadata(None).equals(
        pa.concat_tables([pq.read_table(p).replace_schema_metadata(None) for p in span]))


def test_read_patch_reads_only_the_rows_and_columns_asked_for(sharded, tmp_path):
    """read_patch's filtered, projected read against pandas filtering the whole files."""
    import pandas as pd

    from causal_kl.conditions import ROUTE_CONDITIONS
    from causal_kl.io import concat_parquet, read_patch

    R = sharded
    floors, route = tmp_path / "floors.parquet", tmp_path / "toy.parquet"
    concat_parquet(sorted((R / "span3/patch/floors").glob("shard_*.parquet")), floors, PATCH)
    concat_parquet(sorted((R / "span3/patch/toy").glob("shard_*.parquet")), route, PATCH)
    whole = pd.concat([pd.read_parquet(floors), pd.read_parquet(route)], ignore_index=True)
    whole = whole.astype({"route": str, "condition": str})
    for offsets, conditions, columns in ((None, None, None), ([0, 5, -2], None, ["site_id", "kl"]),
                                         ([0], ["gold", "recon_goldnorm"], ["condition", "offset", "delta_ce"])):
        got = read_patch([floors, route], "toy", offsets=offsets, conditions=conditions, columns=columns)
        keep = (whole["route"] == "") | ((whole["route"] == "toy") & whole["condition"].isin(ROUTE_CONDITIONS))
        if offsets is not None:
            keep &= whole["offset"].isin(offsets)
        if conditions is not None:
            keep &= whole["condition"].isin(conditions)
        want = whole[keep][columns or PATCH.names].reset_index(drop=True)
        assert list(got.columns) == list(want.columns) and len(got) == len(want) > 0
        for c in want.columns:
            if c in ("route", "condition"):
                assert isinstance(got[c].dtype, pd.CategoricalDtype)
                assert set(got[c].cat.categories) == set(want[c])  # no category without rows
                assert got[c].astype(str).tolist() == want[c].tolist()
            else:
                np.testing.assert_array_equal(got[c].to_numpy(), want[c].to_numpy())
    floors_only = read_patch(floors, None, offsets=[0])
    assert (floors_only["route"] == "").all() and (floors_only["offset"] == 0).all()
    with pytest.raises(CausalKLError, match="no rows for route 'other'"):
        read_patch([floors, route], "other")


def test_a_layers_patch_dataset_is_its_span_and_route_files(sharded, tmp_path):
    """patch.json lists every span's floors and route files; patch_dataset scans exactly them (also from a copied
    folder), equal to pandas reading the files one by one."""
    import shutil

    import pandas as pd
    import pyarrow.dataset as ds

    from causal_kl.io import concat_parquet, patch_dataset, read_json
    from causal_kl.jobs.patch import patch_aggregate

    L = tmp_path / "L3"
    floors, routes = [], []
    for k in (1, 3):
        for name, bucket in (("floors", floors), ("toy", routes)):
            out = L / f"span{k}/patch/{name}.parquet"
            method = {"method": "naive", "fast_path_unavailable": "linear attention"} if k == 3 else {"method": "fast"}
            concat_parquet(sorted((sharded / f"span{k}/patch/{name}").glob("shard_*.parquet")), out, PATCH,
                           meta={"span": k, "route": "" if name == "floors" else name, **method})
            bucket.append(str(out))
    prov = {"config_hash": "h", "run": "syn", "model": "m", "layer": 3, "rule": "patch_aggregate"}
    patch_aggregate(floors=floors, routes=routes, index=str(L / "patch.json"), layer="3", provenance=prov)
    index = read_json(L / "patch.json")
    assert [(f["path"], f["span"], f["route"]) for f in index["files"]] == [
        ("span1/patch/floors.parquet", 1, ""), ("span3/patch/floors.parquet", 3, ""),
        ("span1/patch/toy.parquet", 1, "toy"), ("span3/patch/toy.parquet", 3, "toy")]
    # each file says which patch path ran it, as its own provenance does
    assert [(f["method"], f.get("fast_path_unavailable")) for f in index["files"]] == [
        ("fast", None), ("naive", "linear attention"), ("fast", None), ("naive", "linear attention")]
    frames = [pd.read_parquet(p).astype({"route": str, "condition": str}) for p in floors + routes]
    assert index["rows"] == sum(len(f) for f in frames) and index["layer"] == 3
    copy = tmp_path / "copied"
    shutil.copytree(L, copy)
    for where in (L, copy / "patch.json"):
        table = patch_dataset(where).to_table()
        got = table.to_pandas().astype({"route": str, "condition": str})
        pd.testing.assert_frame_equal(got, pd.concat(frames, ignore_index=True))
    one = patch_dataset(copy).to_table(columns=["site_id", "kl"], filter=(ds.field("span") == 3) & (ds.field("offset") == -2))
    want = pd.concat(frames, ignore_index=True)
    assert one.num_rows == int(((want["span"] == 3) & (want["offset"] == -2)).sum()) > 0
    (copy / "span3/patch/toy.parquet").unlink()
    with pytest.raises(CausalKLError, match="listed files missing"):
        patch_dataset(copy)


def test_patch_index_reads_a_files_span_from_its_path_when_its_provenance_has_none(sharded, tmp_path):
    """An aggregate whose provenance names no span (written before spans were recorded) is indexed at the span its
    path names (``L{layer}/span{k}/patch/{route}.parquet``)."""
    from causal_kl.io import concat_parquet, patch_index, read_provenance

    out = tmp_path / "L3.mlp_out" / "span3" / "patch" / "toy.parquet"
    concat_parquet(sorted((sharded / "span3/patch/toy").glob("shard_*.parquet")), out, PATCH, meta={"route": "toy"})
    assert "span" not in read_provenance(out)
    (entry,) = patch_index([out], tmp_path / "L3.mlp_out" / "patch.json")["files"]
    assert (entry["path"], entry["span"], entry["route"]) == ("span3/patch/toy.parquet", 3, "toy")
