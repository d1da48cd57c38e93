"""The benchmark script runs (tiny shape) so it cannot rot; its FLOP model is checked by hand.

The 27B run's code path (model built in bf16, spans, the float32 block-by-block reference of
``--fidelity``) runs here at the tiny shape on CPU: same code, smaller numbers.
"""
import re

import fixtures
import pytest


@pytest.fixture(scope="module")
def bench(root):
    return fixtures.load_benchmark("bench_patch")


def test_tiny_benchmark_runs_and_paths_agree(bench, tmp_path):
    out = tmp_path / "b.json"
    assert bench.main(["--shape", "tiny", "--docs", "2", "--sites-per-doc", "2", "--naive-sites", "2", "--json", str(out)]) == 0
    import json

    r = json.loads(out.read_text())
    assert r["sites"] == 4 and r["max_abs_dKL_fast_vs_naive"] < 1e-4
    assert r["speedup_flop_limit"] > 1 and r["fast_seconds"] > 0 and r["naive_seconds_extrapolated"] > 0
    assert r["fast_tflops"] > 0 and r["naive_tflops"] > 0 and r["matmul_peak_tflops"] > 0 and 0 < r["fast_share_of_matmul_peak"]
    assert 0 < r["clean_pass_seconds"] < r["fast_seconds"] * 5


def test_bf16_span_and_fidelity_at_tiny_shape(bench, tmp_path):
    """What the GPU run does (bf16 build, --span, --fidelity) on CPU at the tiny shape."""
    import json

    import torch

    out = tmp_path / "b.json"
    args = ["--shape", "tiny", "--dtype", "bfloat16", "--docs", "2", "--sites-per-doc", "2", "--naive-sites", "2",
            "--span", "4", "--fidelity", "--fidelity-span", "--json", str(out)]
    assert bench.main(args) == 0
    r = json.loads(out.read_text())
    assert r["dtype"] == "bfloat16" and r["matmul_peak_tflops_float32"] > 0
    s = r["span_row"]
    assert s["span"] == 4 and s["sites"] == 4 and s["speedup_flop_limit"] > 1 and s["fast_tflops"] > 0
    for key, k in (("fidelity", 1), ("fidelity_span", 4)):
        f = r[key]
        assert f["span"] == k and f["sites"] == 6
        # the float32 reference runs on the bf16 weights: fast in float32 agrees with it as in the float32 tests
        assert f["fast_f32_vs_ref"]["max"] < 1e-4
        assert 0 < f["fast_low_vs_ref"]["median"] < 0.05 and 0 < f["naive_low_vs_ref"]["median"] < 0.05
        assert f["floor_fast_low_all_offsets"]["max"] < 0.05
    m = bench.build_model(bench.SHAPES["tiny"], torch.bfloat16, "cpu")
    assert {p.dtype for p in m.model.parameters()} == {torch.bfloat16}  # built in the target dtype, no float32 staging


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
    # a span of 3 at p = 5: the window is positions 5..5+2+31 (34 rows), all read out
    naive3, fast3 = bench.path_flops(shape, docs, span=3)
    w3 = 34
    one3 = sum(tok(t) for t in range(5 + w3) for _ in kinds) + w3 * head
    assert naive3 == pytest.approx((bench.N_VARIANTS + 1) * one3)
    clean3 = sum(tok(t) for t in range(5 + 2 + 32) for _ in kinds)
    windows3 = bench.N_VARIANTS * (sum(tok(5 + i) for i in range(w3)) + w3 * head)
    assert fast3 == pytest.approx(clean3 + w3 * head + windows3)
    # near the end the window is cut: p = 30 of 40 tokens, span 4 -> 10 rows; the clean pass stops at the end
    naive_end, fast_end = bench.path_flops(shape, [([0] * 40, [30])], span=4)
    assert naive_end == pytest.approx((bench.N_VARIANTS + 1) * (sum(tok(t) for t in range(40) for _ in kinds) + 10 * head))
    assert fast_end == pytest.approx(sum(tok(t) for t in range(40) for _ in kinds) + 10 * head
                                     + bench.N_VARIANTS * (sum(tok(30 + i) for i in range(10)) + 10 * head))


@pytest.fixture(scope="module")
def op_trace(root):
    return fixtures.load_benchmark("op_trace")


def test_op_trace_counts_the_fast_paths_matmuls(bench, op_trace):
    """benchmarks/op_trace.py (the load-proof regression check of the fast path): its FLOP count against matmuls of
    known size, its mm calls against the model's nn.Linear calls counted by forward hooks, and its comparison."""
    import torch
    import torch.nn.functional as F

    from causal_kl.patching import patch_documents

    a, b, x, y = torch.randn(3, 5), torch.randn(5, 7), torch.randn(2, 3, 4), torch.randn(2, 4, 6)
    u, w, bias = torch.randn(9, 5), torch.randn(8, 5), torch.randn(8)
    r = op_trace.record(lambda: (a @ b, torch.bmm(x, y), F.linear(u, w, bias), a + 1))
    assert r["matmul_flops"] == 2 * 3 * 5 * 7 + 2 * 2 * 3 * 4 * 6 + 2 * 9 * 5 * 8
    assert any(c.startswith("aten.add.Tensor\t(3, 5)(5, 1)float32") for c in r["calls"])

    shape = dict(bench.SHAPES["tiny"], docs=1, sites_per_doc=2)
    m = bench.build_model(shape, torch.float32, "cpu")
    docs = bench.make_docs(shape)
    sv = bench._sites(docs, shape, torch.float32, "cpu", 1)
    run = [(ids, s) for (ids, _), s in zip(docs, sv)]
    linear = {"calls": 0, "flops": 0}

    def count(mod, inp, out):
        linear["calls"] += 1
        linear["flops"] += 2 * inp[0].numel() // mod.in_features * mod.in_features * mod.out_features

    hooks = [mod.register_forward_hook(count) for mod in m.model.modules() if isinstance(mod, torch.nn.Linear)]
    try:
        t = op_trace.record(patch_documents, m, run, shape["layer"], "fast")
    finally:
        for h in hooks:
            h.remove()
    mm = [c for c in t["calls"] if c.split("\t")[0] in ("aten.mm.default", "aten.addmm.default")]
    assert linear["calls"] > 0 and len(mm) == linear["calls"]
    def shapes(sig: str) -> list[tuple[int, ...]]:  # the tensors' shapes as the signature spells them
        return [tuple(int(n) for n in t.split(",") if n.strip()) for t in re.findall(r"(?:^| )\(([\d, ]*)\)\(", sig)]

    mm_flops = 0
    for c in mm:
        op, sig = c.split("\t")
        x_, w_ = shapes(sig)[-2:]  # addmm: (bias, input, weight.T); mm: (input, weight.T)
        mm_flops += 2 * x_[0] * x_[1] * w_[1]
    assert mm_flops == linear["flops"]
    assert t["matmul_flops"] > linear["flops"]  # the window attention's bmm on top of the linear maps
    same = op_trace.record(patch_documents, m, run, shape["layer"], "fast")
    assert op_trace.compare(t, same)["same_calls"]
    fewer = op_trace.compare(t, op_trace.record(patch_documents, m, [(run[0][0], run[0][1][:1])], shape["layer"], "fast"))
    assert not fewer["same_calls"] and fewer["extra_in_first"] and fewer["matmul_gflop_difference"] < 0
