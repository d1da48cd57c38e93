"""The benchmark script runs (tiny shape) so it cannot rot; its FLOP model is checked by hand."""
import importlib.util
import sys

import pytest


@pytest.fixture(scope="module")
def bench(root):
    spec = importlib.util.spec_from_file_location("bench_patch", root / "benchmarks/bench_patch.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_patch"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_tiny_benchmark_runs_and_paths_agree(bench, tmp_path):
    out = tmp_path / "b.json"
    assert bench.main(["--shape", "tiny", "--docs", "2", "--sites-per-doc", "2", "--naive-sites", "2", "--json", str(out)]) == 0
    import json

    r = json.loads(out.read_text())
    assert r["sites"] == 4 and r["max_abs_dKL_fast_vs_naive"] < 1e-4
    assert r["speedup_flop_limit"] > 1 and r["fast_seconds"] > 0 and r["naive_seconds_extrapolated"] > 0


def test_flop_model_by_hand(bench):
    shape = dict(hidden_size=4, intermediate_size=8, num_hidden_layers=2, num_attention_heads=1, num_key_value_heads=1,
                 head_dim=4, vocab_size=10, sliding_window=2, layer=0)
    # per token per block: 2*(4*4 + 2*4*4 + 4*4 + 3*4*8) = 320 linear, + 4*1*4*keys attention
    assert bench.flops_per_token_layer(shape, 3) == 320 + 48
    docs = [([0] * 40, [5])]
    naive, fast = bench.path_flops(shape, docs)
    kinds = ["sliding_attention", "sliding_attention"]  # (i+1) % 6 != 0 for both blocks
    tok = lambda t: 320 + 16 * min(t + 1, 2)  # noqa: E731
    head = 2 * 4 * 10
    w = 32
    one = sum(tok(t) for t in range(5 + w) for _ in kinds) + w * head
    assert naive == pytest.approx((bench.N_VARIANTS + 1) * one)
    clean = sum(tok(t) for t in range(min(40, 5 + 32)) for _ in kinds)
    windows = bench.N_VARIANTS * (sum(tok(5 + i) for i in range(w)) + w * head)  # block 1 only (L = 0)
    assert fast == pytest.approx(clean + w * head + windows)
