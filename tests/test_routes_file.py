"""The `file` route: every accepted format reproduces the vectors, every bad input is a one-line error."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file

from causal_kl.contracts import RECON
from causal_kl.errors import CausalKLError
from causal_kl.io import arrow_to_vectors, read_parquet, read_provenance
from causal_kl.jobs.recon import recon_file
from causal_kl.routes.file import input_files
from run_files import PROVENANCE, base_config, make_run


def _run(tmp_path, route):
    """The recon_file rule's job on a route entry (validated like the config's)."""
    entry = base_config(tmp_path, {"r": route})["routes"]["r"]
    recon_file(vectors=input_files(entry), sites=str(tmp_path / "sites.parquet"), gold=str(tmp_path / "gold.parquet"),
               recon=str(tmp_path / "recon.parquet"), route_entry=entry, source_fingerprint=[None], layer="3", route="r",
               provenance=PROVENANCE)
    t = read_parquet(tmp_path / "recon.parquet", RECON)
    return t.column("site_id").to_numpy(), arrow_to_vectors(t.column("reconstruction"))


@pytest.fixture
def run(tmp_path):
    sites_path, gold_path, sites, gold = make_run(tmp_path)
    recon = (gold + np.random.default_rng(3).standard_normal(gold.shape)).astype(np.float32)
    perm = np.random.default_rng(4).permutation(len(recon))  # files list sites in any order
    return tmp_path, sites.to_pandas(), recon, perm


def _parquet(path, cols):
    pq.write_table(pa.table(cols), path)
    return str(path)


@pytest.mark.parametrize("key", ["site_id", "doc_id+position", "doc_id+n_raw_tokens"])
def test_parquet_keys(run, key):
    tmp, sites, recon, perm = run
    cols = {"vec": [list(map(float, recon[i])) for i in perm]}  # a plain (not fixed-size) list column
    if key == "site_id":
        cols["site_id"] = perm.tolist()
    else:
        cols["doc_id"] = sites.doc_id.to_numpy()[perm].tolist()
        pos = sites.position.to_numpy()[perm]
        cols["position" if key.endswith("position") else "n_raw_tokens"] = (pos if key.endswith("position") else pos + 1).tolist()
    ids, out = _run(tmp, {"kind": "file", "path": _parquet(tmp / "r.parquet", cols), "column": "vec"})
    assert ids.tolist() == sites.site_id.tolist()
    np.testing.assert_array_equal(out, recon)
    assert read_provenance(tmp / "recon.parquet")["route"] == "r"


def test_npy_with_sidecar_and_safetensors(run):
    tmp, sites, recon, perm = run
    np.save(tmp / "r.npy", recon[perm])
    np.save(tmp / "r.site_ids.npy", perm.astype(np.int64))
    np.testing.assert_array_equal(_run(tmp, {"kind": "file", "path": str(tmp / "r.npy")})[1], recon)
    save_file({"reconstruction": torch.from_numpy(recon[perm]).to(torch.bfloat16), "site_id": torch.from_numpy(perm)},
              str(tmp / "r.safetensors"))
    out = _run(tmp, {"kind": "file", "path": str(tmp / "r.safetensors")})[1]
    np.testing.assert_array_equal(out, torch.from_numpy(recon).to(torch.bfloat16).float().numpy())


def _bad_cases(tmp, recon, perm):
    d = recon.shape[1]
    nan = recon.copy(); nan[3, 2] = np.nan
    inf = recon.copy(); inf[5, 0] = np.inf
    ids = np.arange(len(recon))
    return {
        "width": (recon[:, : d - 1], ids, "width"),
        "nan": (nan, ids, "NaN"),
        "inf": (inf, ids, "inf"),
        "missing": (recon[:-2], ids[:-2], "missing"),
        "extra": (np.concatenate([recon, recon[:1]]), np.append(ids, 999), "extra"),
        "duplicate": (np.concatenate([recon, recon[:1]]), np.append(ids, 0), "more than once"),
    }


@pytest.mark.parametrize("fmt", ["parquet", "npy", "safetensors"])
@pytest.mark.parametrize("case", ["width", "nan", "inf", "missing", "extra", "duplicate"])
def test_bad_inputs_are_one_line_errors(run, fmt, case):
    tmp, _, recon, perm = run
    vectors, ids, words = _bad_cases(tmp, recon, perm)[case]
    if fmt == "parquet":
        path = _parquet(tmp / "bad.parquet", {"site_id": ids.tolist(), "reconstruction": [list(map(float, v)) for v in vectors]})
    elif fmt == "npy":
        path = str(tmp / "bad.npy")
        np.save(path, vectors)
        np.save(tmp / "bad.site_ids.npy", ids.astype(np.int64))
    else:
        path = str(tmp / "bad.safetensors")
        save_file({"reconstruction": torch.from_numpy(vectors.astype(np.float32)), "site_id": torch.from_numpy(ids.astype(np.int64))}, path)
    with pytest.raises(CausalKLError) as e:
        _run(tmp, {"kind": "file", "path": path})
    msg = str(e.value)
    assert "\n" not in msg and "Fix:" in msg and Path(path).name in msg
    assert words.lower() in msg.lower() or (case == "duplicate" and "duplicate" in msg.lower()), msg
    assert not (tmp / "recon.parquet").exists()


@pytest.mark.parametrize("case", ["no_sidecar", "no_column", "no_key", "extension"])
def test_bad_layout_errors(run, case):
    tmp, _, recon, _ = run
    if case == "no_sidecar":
        np.save(tmp / "v.npy", recon)
        route, field = {"kind": "file", "path": str(tmp / "v.npy")}, "site_ids"
    elif case == "no_column":
        route = {"kind": "file", "path": _parquet(tmp / "v.parquet", {"site_id": list(range(len(recon))), "x": [1.0] * len(recon)})}
        field = "reconstruction"
    elif case == "no_key":
        route = {"kind": "file", "path": _parquet(tmp / "v.parquet", {"reconstruction": [list(map(float, v)) for v in recon]})}
        field = "site_id"
    else:
        (tmp / "v.csv").write_text("x")
        route, field = {"kind": "file", "path": str(tmp / "v.csv")}, "format"
    with pytest.raises(CausalKLError) as e:
        _run(tmp, route)
    assert "\n" not in str(e.value) and field in str(e.value) and "Fix:" in str(e.value)
