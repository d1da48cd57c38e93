"""Config schema: defaults, one-line errors naming file, key and fix; the snakemake validator agrees."""
import copy

import pytest
import yaml

from causal_kl.config import canonical, config_hash, is_production, load_config, validate_config
from causal_kl.errors import CausalKLError

MIN = {"corpus": {"name": "c", "column": "content", "rows": [0, 10]}, "model": {"path": "m", "layer": 1}}


def test_demo_and_production_configs_validate(root):
    demo = load_config(root / "config/config.yaml")
    # the demo: two shards of its sites, both layers, every span (what the README's demo section describes)
    assert demo["run"] == "demo" and demo["sites"]["max_sites"] == 2 * demo["sites"]["shard_size"]
    assert demo["model"]["layer"] == [1, 3] and demo["patch"]["spans"] == [1, 4, 16]
    # an SAE suite of three sparsities for the frontier; the span splices for two routes, every other route at span 1
    saes = {name: r for name, r in demo["routes"].items() if r["kind"] == "sae" and "hook" not in r}
    assert len(saes) == len(demo["demo"]["sae"]["k"]) == 3
    # and inside block 3, at their hooks: an MLP-out SAE, an attention (hook_z) SAE and a skip transcoder
    inside = {name: (r.get("hook_in", r["hook"]), r["hook"], r["layer"]) for name, r in demo["routes"].items() if "hook" in r}
    assert sorted(inside.values()) == [("attn_z", "attn_z", 3), ("mlp_in", "mlp_out", 3), ("mlp_out", "mlp_out", 3)]
    assert demo["demo"]["sae"]["sublayer"]["layer"] == 3
    assert {tuple(r.get("spans") or demo["patch"]["spans"]) for r in demo["routes"].values()} == {(1,), (1, 4, 16)}
    prod = load_config(root / "config/gemma3-27b.yaml")
    assert prod["model"]["layer"] == 41 and prod["corpus"]["rows"] == [100000, 100200]
    assert prod["sites"]["max_sites"] == 1000 and prod["dtype"] == "bfloat16"
    assert is_production(prod) and not is_production(demo)


def test_defaults_are_filled():
    c = validate_config(copy.deepcopy(MIN))
    assert c["sites"] == {"positions_per_doc": 10, "min_position": 50, "max_length": 2048, "max_sites": 1000, "shard_size": 100}
    assert c["patch"]["method"] == "fast" and c["seed"] == 42 and c["gold"]["min_cos"] == 0.999


@pytest.mark.parametrize("bad, key, fix", [
    ({"sitse": {}}, "sitse", "did you mean 'sites'"),
    ({"sites": {"max_site": 5}}, "sites.max_site", "did you mean 'max_sites'"),
    ({"model": {"path": "m", "layer": "forty"}}, "model.layer", "integer"),
    ({"device": "tpu"}, "device", "one of"),
    ({"model": {"path": "m"}}, "model.layer", "add 'layer'"),
])
def test_schema_errors_are_one_line_with_file_key_fix(bad, key, fix, tmp_path):
    cfg = copy.deepcopy(MIN)
    for k, v in bad.items():
        cfg[k] = v
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(CausalKLError) as e:
        load_config(path)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(str(path)) and key in msg and "Fix:" in msg and fix in msg


def test_snakemake_validate_accepts_what_we_accept(root):
    from snakemake.utils import validate

    c = validate_config(copy.deepcopy(MIN))
    validate(c, str(root / "config/schema/config.schema.yaml"))  # raises on disagreement


def test_config_hash_ignores_key_order():
    a = validate_config(copy.deepcopy(MIN))
    b = dict(reversed(list(copy.deepcopy(a).items())))
    assert config_hash(a) == config_hash(b)
    b["seed"] = 7
    assert config_hash(a) != config_hash(b)


def _reordered(value):
    """Every mapping's keys reversed, recursively: the same config as another entry point might give it."""
    if isinstance(value, dict):
        return {k: _reordered(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reordered(v) for v in value]
    return value


def test_canonical_sorts_every_mapping_so_the_repr_snakemake_compares_ignores_key_order(root):
    """Snakemake records each param as ``repr(value)`` and reruns a job when the set of reprs differs
    (snakemake/persistence: _serialize_param, params_changed); a canonical dict's repr is the same whatever order
    the keys came in. Keys are sorted (numbers and digit strings by value), lists keep their order."""
    demo = load_config(root / "config/config.yaml")
    again = _reordered(copy.deepcopy(demo))
    assert repr(demo["demo"]["train"]) != repr(again["demo"]["train"])  # the key order the copied demo folder saw
    assert repr(canonical(demo)) == repr(canonical(again)) and canonical(demo) == demo

    def sorted_everywhere(value):
        if isinstance(value, dict):
            keys = list(value)
            digits = [k for k in keys if str(k).isdecimal()]
            assert keys == sorted(digits, key=int) + sorted(k for k in keys if k not in digits), keys
            return all(sorted_everywhere(v) for v in value.values())
        if isinstance(value, (list, tuple)):
            return all(sorted_everywhere(v) for v in value)
        return True

    assert sorted_everywhere(canonical(again))
    manifest = {"layers": {"16": {"b": 1, "a": [{"z": 1, "y": 2}]}, "3": {}}, "spans": [16, 4, 1], "tags": {"b", "a"}}
    assert repr(canonical(manifest)) == (
        "{'layers': {'3': {}, '16': {'a': [{'y': 2, 'z': 1}], 'b': 1}}, 'spans': [16, 4, 1], 'tags': ['a', 'b']}")


def test_cli_validate_reports_one_line(tmp_path, capsys):
    from causal_kl.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(dict(MIN, sitse={})))
    assert main(["validate", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "sitse" in err and "did you mean 'sites'" in err


def _points_config(**routes):
    cfg = copy.deepcopy(MIN)
    cfg["model"]["layer"] = [1, 3]
    cfg["routes"] = routes
    return validate_config(cfg)


def test_run_points_are_the_layers_plus_each_routes_hook_at_its_layers():
    from causal_kl.config import gold_points, route_hook, route_points, routes_at, run_layers, run_points
    from causal_kl.hooks import Point

    residual = _points_config(pca={"kind": "pca", "train_rows": [20, 30]})
    assert run_points(residual) == [Point(1), Point(3)]  # a residual-stream run: its points are its layers
    assert "hook" not in residual["routes"]["pca"]  # no default filled in: the config (and its hash) reads as before
    assert route_hook(residual, "pca") == "resid_post" and routes_at(residual, 3) == routes_at(residual, "3") == ["pca"]

    c = _points_config(pca={"kind": "pca", "train_rows": [20, 30]},
                       mlp={"kind": "pca", "train_rows": [20, 30], "hook": "mlp_out", "layer": 3},
                       z={"kind": "file", "path": "z_L{layer}.parquet", "hook": "attn_z"})
    assert run_layers(c) == [1, 3]
    assert [p.name for p in run_points(c)] == ["1", "1.attn_z", "3", "3.attn_z", "3.mlp_out"]
    assert gold_points(c) == run_points(c)
    assert route_points(c, "mlp") == [Point(3, "mlp_out")] and route_points(c, "z") == [Point(1, "attn_z"), Point(3, "attn_z")]
    # floors are per point, shared by every route there; a route is at its own point only
    assert routes_at(c, "3") == ["pca"] and routes_at(c, "3.mlp_out") == ["mlp"] and routes_at(c, Point(1, "attn_z")) == ["z"]
    assert routes_at(c, "1.mlp_out") == []


def test_layer_path_fills_in_a_points_layer():
    from causal_kl.config import layer_path

    assert layer_path("sae/L{layer}", 3) == layer_path("sae/L{layer}", "3") == layer_path("sae/L{layer}", "3.mlp_out") == "sae/L3"


def test_a_route_hook_outside_the_vocabulary_is_one_line(tmp_path):
    cfg = copy.deepcopy(MIN)
    cfg["routes"] = {"p": {"kind": "pca", "train_rows": [20, 30], "hook": "mlp_post"}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(CausalKLError) as e:
        load_config(path)
    assert "routes.p.hook" in str(e.value) and "mlp_out" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("block, ok, keep", [
    (True, True, 0.0), (False, True, 0.0), ({"keep_s": 600}, True, 600.0), ({"keep_s": 0}, True, 0.0),
    ({"keep_s": -1}, False, None), ({}, False, None), ({"keep": 60}, False, None),
    ({"work_ahead": False}, True, 0.0), ({"keep_s": 60, "work_ahead": True}, True, 60.0), ({"work_ahead": "no"}, False, None),
])
def test_model_server_is_a_boolean_or_a_keep_s_block_and_keep_s_leaves_the_config_hash_alone(block, ok, keep, tmp_path, root):
    from snakemake.utils import validate

    from causal_kl.ahead import work_ahead_on
    from causal_kl.config import model_server_keep_s

    cfg = dict(copy.deepcopy(MIN), model_server=block)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    if not ok:
        with pytest.raises(CausalKLError) as e:
            load_config(path)
        assert "\n" not in str(e.value) and str(e.value).startswith(f"{path}: model_server: got ")
        assert str(e.value).endswith("Fix: set it to true or false or {keep_s: seconds (0 or more), work_ahead: true or false}")
        return
    c = load_config(path)
    validate(c, str(root / "config/schema/config.schema.yaml"))
    assert model_server_keep_s(c) == keep
    # the server works ahead unless it is off or told not to (a re-implementation of the rule)
    assert work_ahead_on(c) == (block is not False and not (isinstance(block, dict) and block.get("work_ahead") is False))
    # how long a server is kept is how a run executes, not what it computes: the same hash as plain `true`
    plain = load_config(path) | {"model_server": bool(block)}
    assert config_hash(c) == config_hash(plain)
