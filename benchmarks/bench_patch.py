#!/usr/bin/env python
"""Benchmark the patch stage: fast path vs the naive reference, vs the FLOP-count limit and vs a matmul peak.

Builds a randomly initialised Gemma-3-architecture model of a chosen shape directly in the target
dtype on the target device (the 27B shape in bf16 fits an 80 GB H100), synthetic documents, patches
the same sites with both paths in one process, checks they agree, and prints: sites/s of each path,
the measured speed-up, the speed-up the FLOP count allows for those same sites (tokens x blocks each
path must compute, attention and LM head included) and the ratio of the two; each path's achieved
TFLOP/s from that FLOP model and its share of a matmul peak measured in the same run. The naive path
is timed on a sample of sites (``--naive-sites``) and extrapolated.

    python benchmarks/bench_patch.py --shape cpu --threads 2 --span 16 --repeat 3   # 18 blocks, d 256, ~600-token docs
    python benchmarks/bench_patch.py --shape 27b --device cuda --dtype bfloat16 --span 16 --fidelity
    python benchmarks/bench_patch.py --shape tiny         # seconds; what the tests run

``--span K`` adds a row for spans of K positions (each site patches p..p+K-1; readout K-1+32 rows).
``--fidelity`` compares fast-bf16 and naive-bf16 with a float32 naive reference on the same weights
(the model's own bf16 weights, run block by block in float32 so no float32 copy of the model is
needed), on two documents with sites below, at and past the sliding window, and reports each path's
clean re-patch floor (variant 0 is each site's own clean vector); ``--fidelity-span`` repeats it for
spans of K.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import time

import numpy as np
import torch

SHAPES = {
    # prototype's CPU shape (notes/fast-path.md): 18 blocks, L = 12, window 128 < ~600-token documents
    "cpu": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=18, num_attention_heads=4, num_key_value_heads=1,
                head_dim=64, vocab_size=8192, sliding_window=128, layer=12, docs=16, doc_len=(564, 637), sites_per_doc=10),
    # google/gemma-3-27b-it's text decoder; L = 41; Ultra-FineWeb documents truncated at 2048 tokens
    "27b": dict(hidden_size=5376, intermediate_size=21504, num_hidden_layers=62, num_attention_heads=32, num_key_value_heads=16,
                head_dim=128, vocab_size=262208, sliding_window=1024, layer=41, docs=100, doc_len=(700, 2048), sites_per_doc=10),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=1,
                 head_dim=16, vocab_size=512, sliding_window=32, layer=3, docs=3, doc_len=(120, 160), sites_per_doc=4),
}
N_VARIANTS = 8  # every patched condition: gold, recon x2, noise, resample x2, zero, mean (clean is not recomputed)
W_OUT = 32  # readout positions after a span's last one


def build_model(shape: dict, dtype: torch.dtype, device: str, seed: int = 0):
    """A random-weight Gemma-3 of ``shape``, allocated once, directly in ``dtype`` on ``device`` (no float32 staging)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    n = shape["num_hidden_layers"]
    cfg = Gemma3TextConfig(
        vocab_size=shape["vocab_size"], hidden_size=shape["hidden_size"], intermediate_size=shape["intermediate_size"],
        num_hidden_layers=n, num_attention_heads=shape["num_attention_heads"], num_key_value_heads=shape["num_key_value_heads"],
        head_dim=shape["head_dim"], sliding_window=shape["sliding_window"], max_position_embeddings=4096,
        final_logit_softcapping=30.0, query_pre_attn_scalar=shape["head_dim"],
        layer_types=[("full_attention" if (i + 1) % 6 == 0 else "sliding_attention") for i in range(n)],
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
        attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = Gemma3ForCausalLM(cfg)
    model = model.to(dtype).to_empty(device=device)  # the cast is free on meta: storage is allocated once, in dtype
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.zero_()
            else:
                p.normal_(0.0, 0.02)
        model.model.norm.weight.fill_(20.0)  # logits of order +-10..30 so KL and the soft-cap are exercised
    # non-persistent buffers (rotary inv_freq, embedding scale) were left empty by to_empty: rebuild them
    with torch.device(device):
        model.model.rotary_emb = type(model.model.rotary_emb)(cfg)
    model.model.embed_tokens.embed_scale = torch.tensor(cfg.hidden_size ** 0.5, device=device, dtype=dtype)
    model.eval().requires_grad_(False)
    from causal_kl.models import wrap_model

    return wrap_model(model, f"random {shape['num_hidden_layers']}-block Gemma-3")


def make_docs(shape: dict, seed: int = 0):
    rng = random.Random(seed)
    docs = []
    for _ in range(shape["docs"]):
        T = rng.randint(*shape["doc_len"])
        ids = [2] + [rng.randrange(3, shape["vocab_size"]) for _ in range(T - 1)]
        positions = rng.sample(range(50, T), shape["sites_per_doc"])
        docs.append((ids, positions))
    return docs


def flops_per_token_layer(shape: dict, n_keys: float) -> float:
    d, h, kvh, hd, ff = (shape[k] for k in ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size"))
    linear = 2 * (d * h * hd + 2 * d * kvh * hd + h * hd * d + 3 * d * ff)
    attn = 4 * h * hd * n_keys
    return linear + attn


def path_flops(shape: dict, docs, span: int = 1) -> tuple[float, float]:
    """FLOPs each path must do for these sites: (naive, fast), spans of ``span`` positions.

    Per token and block: the linear maps plus attention over the keys the token may see
    (t + 1 in global blocks, min(t + 1, W) in sliding ones); the LM head at readout positions.
    A site at p reads out w = min(span - 1 + 32, T - p) positions p..p+w-1. Naive: every variant and
    the clean run forward tokens 0..p+w-1 through every block. Fast: one clean pass per document
    through the last window, then per variant the w window tokens through blocks L+1..end; the
    clean row's head once per site.
    """
    L, n, W, d, V = shape["layer"], shape["num_hidden_layers"], shape["sliding_window"], shape["hidden_size"], shape["vocab_size"]
    kinds = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n)]
    head = 2 * d * V
    linear = flops_per_token_layer(shape, 0)
    per_key = flops_per_token_layer(shape, 1) - linear

    def tokens(a: int, b: int, blocks) -> float:
        """FLOPs for tokens a..b-1 through ``blocks``."""
        t = np.arange(a, b, dtype=np.float64)
        total = 0.0
        for l in blocks:
            keys = t + 1 if kinds[l] == "full_attention" else np.minimum(t + 1, W)
            total += len(t) * linear + per_key * keys.sum()
        return total

    naive = fast = 0.0
    for ids, positions in docs:
        T = len(ids)
        fast += tokens(0, min(T, max(positions) + span - 1 + W_OUT), range(n))  # one clean pass through the last window
        for p in positions:
            w = min(span - 1 + W_OUT, T - p)
            fast += w * head + N_VARIANTS * (tokens(p, p + w, range(L + 1, n)) + w * head)
            naive += (N_VARIANTS + 1) * (tokens(0, p + w, range(n)) + w * head)  # every variant and the clean run
    return naive, fast


def matmul_peak(device: str, dtype: torch.dtype, n: int | None = None, reps: int = 10) -> float:
    """Measured TFLOP/s of an n x n x n matmul (8192 on CUDA; 2048 on CPU, 1024 below float32) in ``dtype``: the best of ``reps`` timings.

    On CUDA each timing is 5 back-to-back products (launch gaps hidden); on CPU, one.
    """
    cuda = device.startswith("cuda")
    n = n or (8192 if cuda else 2048 if dtype == torch.float32 else 1024)
    inner = 5 if cuda else 1
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        t = time.perf_counter()
        for _ in range(inner):
            a @ b
        _sync(device)
        best = min(best, (time.perf_counter() - t) / inner)
    return 2 * n ** 3 / best / 1e12


def _sig(x: float, digits: int = 3) -> float:
    """``x`` to ``digits`` significant figures (a rate of a tiny shape is not rounded to 0)."""
    return float(f"{x:.{digits}g}")


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


@contextlib.contextmanager
def float32_blockwise(loaded):
    """Run the model in float32 on its own (low-precision) weights without a float32 copy of the model.

    Embedding, final norm and LM head are upcast for the duration; each decoder block is upcast just
    before it runs and cast back after (exact: its weights are representable in the low precision).
    TF32 is off. Both paths (clean pass, window blocks, naive forwards) see float32 blocks.
    """
    low = loaded.dtype
    edges = [loaded.embed_tokens, loaded.final_norm, loaded.lm_head]
    hooks = []
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        for mod in edges:
            mod.to(torch.float32)
        def up(mod, args):  # hooks return None: a returned value would replace the block's inputs/outputs
            mod.to(torch.float32)

        def down(mod, args, out):
            mod.to(low)

        for layer in loaded.layers:
            hooks.append(layer.register_forward_pre_hook(up))
            hooks.append(layer.register_forward_hook(down))
        yield
    finally:
        for h in hooks:
            h.remove()
        for mod in edges:
            mod.to(low)
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def _sites(docs, shape: dict, dtype, device: str, span: int, seed: int = 1):
    """SiteVariants per document: N_VARIANTS random vectors per position of each span (positions moved left to fit)."""
    from causal_kl.patching import SiteVariants

    g = torch.Generator().manual_seed(seed)
    out = []
    for di, (ids, positions) in enumerate(docs):
        sv = []
        for k, p in enumerate(positions):
            p = min(p, len(ids) - span)
            v = (torch.randn(N_VARIANTS, span, shape["hidden_size"], generator=g) * 0.5).to(device, dtype)
            sv.append(SiteVariants(di * 1000 + k, p, [f"c{i}" for i in range(N_VARIANTS)], v[:, 0] if span == 1 else v))
        out.append(sv)
    return out


def _time_paths(m, docs, site_sets, L: int, shape: dict, args, span: int, device: str) -> dict:
    """Fast over every site (documents batched together), naive on a sample; FLOP model and agreement.

    The two paths take turns, fast then naive, ``--repeat`` times, and each keeps its fastest run: a change in the
    box's load over the minutes this takes then reaches both paths' timings rather than only the later one's.
    """
    from causal_kl.patching import naive_site, patch_documents

    n_sites = sum(len(s) for s in site_sets)
    docs_sv = [(ids, sv) for (ids, _), sv in zip(docs, site_sets)]
    sample = [(ids, s) for ids, sv in docs_sv for s in sv]
    random.Random(0).shuffle(sample)
    sample = sample[: args.naive_sites]
    patch_documents(m, docs_sv[:1], L, "fast", args.sites_per_batch)  # warm-up (kernels, allocator)
    naive_site(m, sample[0][0], L, sample[0][1])  # warm-up
    fast_s = fast_cpu = naive_sample_s = naive_sample_cpu = float("inf")
    for _ in range(args.repeat):  # the fastest of --repeat runs: another process's load spike only ever adds time
        _sync(device)
        t, c = time.perf_counter(), time.process_time()
        fast = {r.site_id: r for res in patch_documents(m, docs_sv, L, "fast", args.sites_per_batch) for r in res}
        _sync(device)
        fast_s, fast_cpu = min(fast_s, time.perf_counter() - t), min(fast_cpu, time.process_time() - c)
        t, c = time.perf_counter(), time.process_time()
        naive = [naive_site(m, ids, L, s) for ids, s in sample]
        _sync(device)
        naive_sample_s, naive_sample_cpu = min(naive_sample_s, time.perf_counter() - t), min(naive_sample_cpu, time.process_time() - c)
    naive_s = naive_sample_s / len(sample) * n_sites
    dkl = max(float(np.nanmax(np.abs(fast[r.site_id].kl - r.kl))) if r.valid.any() else 0.0 for r in naive)
    med_kl = float(np.nanmedian(np.concatenate([r.kl.ravel() for r in naive])))
    positions = [(ids, [s.position for s in sv]) for ids, sv in docs_sv]
    fl_naive, fl_fast = path_flops(shape, positions, span)
    fl_naive_sample = path_flops(shape, [(ids, [s.position]) for ids, s in sample], span)[0]
    cpu_time = {}
    if not device.startswith("cuda"):  # CPU time of this process: less sensitive than wall time to other load on the box
        naive_cpu = naive_sample_cpu / len(sample) * n_sites
        cpu_time = {"fast_cpu_seconds": round(fast_cpu, 3), "naive_cpu_seconds_extrapolated": round(naive_cpu, 3),
                    "speedup_cpu_time": round(naive_cpu / fast_cpu, 2),
                    "share_of_flop_limit_cpu_time": round((naive_cpu / fast_cpu) / (fl_naive / fl_fast), 3)}
    return {
        **cpu_time,
        "span": span, "sites": n_sites, "fast_seconds": round(fast_s, 3), "naive_seconds_extrapolated": round(naive_s, 3),
        "naive_sites_timed": len(sample), "fast_sites_per_s": round(n_sites / fast_s, 2), "naive_sites_per_s": round(n_sites / naive_s, 3),
        "repeats": args.repeat, "speedup_measured": round(naive_s / fast_s, 2), "speedup_flop_limit": round(fl_naive / fl_fast, 2),
        "share_of_flop_limit": round((naive_s / fast_s) / (fl_naive / fl_fast), 3),
        # 3 significant figures, not decimals: a tiny shape on a busy CPU computes well under 1 GFLOP/s
        "fast_pflop": _sig(fl_fast / 1e15), "naive_pflop": _sig(fl_naive / 1e15),
        "fast_tflops": _sig(fl_fast / fast_s / 1e12), "naive_tflops": _sig(fl_naive_sample / naive_sample_s / 1e12),
        "max_abs_dKL_fast_vs_naive": dkl, "median_KL_naive": med_kl,
    }


def _stats(x: np.ndarray) -> dict:
    x = np.abs(x[np.isfinite(x)])
    if not len(x):
        return {"median": None, "p90": None, "max": None, "n": 0}
    return {"median": float(np.median(x)), "p90": float(np.quantile(x, 0.9)), "max": float(x.max()), "n": len(x)}


def fidelity(m, shape: dict, L: int, device: str, span: int = 1) -> dict:
    """fast-low and naive-low vs a float32 naive reference on the same weights; each path's clean re-patch floor.

    Two documents of W + max(200, W/4) + 32 tokens, three sites each: below (W/2), at (W) and past
    (W + W/4) the sliding window W. Variant 0 is each site's own clean vector(s) from the low-precision
    clean pass, so its KL is the path's re-patch floor; the others are random, zero and gold + noise.
    """
    from causal_kl.patching import SiteVariants, clean_pass, naive_site, patch_documents

    W = shape["sliding_window"]
    T = W + max(200, W // 4) + W_OUT + span
    rng = random.Random(7)
    g = torch.Generator().manual_seed(7)
    docs = []
    for di in range(2):
        ids = [2] + [rng.randrange(3, shape["vocab_size"]) for _ in range(T - 1 + 37 * di)]
        st = clean_pass(m, ids, L)
        sv = []
        for k, p in enumerate((W // 2, W, W + W // 4)):
            gold = st.hidden_L[p: p + span].float().cpu()  # [span, d]
            v = torch.randn(N_VARIANTS, span, shape["hidden_size"], generator=g) * 0.5
            v[0] = gold
            v[1] = gold + 0.05 * gold.norm(dim=-1, keepdim=True) / shape["hidden_size"] ** 0.5 * torch.randn(span, shape["hidden_size"], generator=g)
            v[2] = 0
            v = v.to(device, m.dtype)
            sv.append(SiteVariants(di * 10 + k, p, [f"c{i}" for i in range(N_VARIANTS)], v[:, 0] if span == 1 else v))
        docs.append((ids, sv))
        del st

    def kl(results):
        return np.stack([r.kl for res in results for r in res])  # [sites, V, W]

    fast_low = kl(patch_documents(m, docs, L, "fast"))
    naive_low = kl([[naive_site(m, ids, L, s) for s in sv] for ids, sv in docs])
    with float32_blockwise(m):
        ref = kl([[naive_site(m, ids, L, s) for s in sv] for ids, sv in docs])
        fast32 = kl(patch_documents(m, docs, L, "fast"))
    _sync(device)
    c0 = span - 1  # column of offset 0
    return {
        "span": span, "sites": int(fast_low.shape[0]), "variants": N_VARIANTS, "doc_tokens": [len(ids) for ids, _ in docs],
        "positions": [s.position for _, sv in docs for s in sv],
        "fast_low_vs_ref": _stats(fast_low - ref), "naive_low_vs_ref": _stats(naive_low - ref), "fast_low_vs_naive_low": _stats(fast_low - naive_low),
        "fast_f32_vs_ref": _stats(fast32 - ref),
        "floor_fast_low_offset0": _stats(fast_low[:, 0, c0]), "floor_fast_low_all_offsets": _stats(fast_low[:, 0]),
        "floor_naive_low_offset0": _stats(naive_low[:, 0, c0]), "floor_naive_low_all_offsets": _stats(naive_low[:, 0]),
        "floor_ref_all_offsets": _stats(ref[:, 0]),
        "median_KL_ref": float(np.nanmedian(ref)), "max_KL_ref": float(np.nanmax(ref)),
    }


def run(args) -> dict:
    shape = dict(SHAPES[args.shape])
    for k in ("docs", "sites_per_doc"):
        if getattr(args, k) is not None:
            shape[k] = getattr(args, k)
    dtype = getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    out: dict = {"shape": args.shape, "device": args.device, "dtype": args.dtype,
                 "device_name": torch.cuda.get_device_name() if cuda else f"CPU x{torch.get_num_threads()} threads",
                 "torch": torch.__version__}
    import transformers

    out["transformers"] = transformers.__version__
    t0 = time.perf_counter()
    m = build_model(shape, dtype, args.device)
    _sync(args.device)
    out["build_seconds"] = round(time.perf_counter() - t0, 1)
    if cuda:
        out["build_peak_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 1)
    peak = matmul_peak(args.device, dtype)
    out["matmul_peak_tflops"] = float(f"{peak:.3g}")  # 3 significant figures: a tiny bf16 CPU peak rounds to 0 at 2 decimals
    out["matmul_peak_dtype"] = args.dtype
    if dtype != torch.float32:
        out["matmul_peak_tflops_float32"] = float(f"{matmul_peak(args.device, torch.float32):.3g}")
    _partial(args, out)

    docs = make_docs(shape)
    L = shape["layer"]
    out["docs"], out["variants_per_site"] = len(docs), N_VARIANTS
    row = _time_paths(m, docs, _sites(docs, shape, dtype, args.device, 1), L, shape, args, 1, args.device)
    out.update({k: v for k, v in row.items() if k != "span"})
    out["fast_share_of_matmul_peak"] = _sig(row["fast_tflops"] / peak)
    out["naive_share_of_matmul_peak"] = _sig(row["naive_tflops"] / peak)
    # the clean passes alone, for the clean / window split
    from causal_kl.patching import clean_pass

    def tok(ds):
        return sum(min(len(ids), max(p) + W_OUT + 1) for ids, p in ds)

    timed = docs[:20]  # 20 documents timed, scaled to all by their token counts
    t = time.perf_counter()
    for ids, positions in timed:
        clean_pass(m, ids[: max(positions) + W_OUT + 1], L)
    _sync(args.device)
    out["clean_pass_seconds"] = round((time.perf_counter() - t) * tok(docs) / tok(timed), 6)
    out["clean_pass_docs_timed"] = len(timed)
    _partial(args, out)
    if args.span and args.span > 1:
        srow = _time_paths(m, docs, _sites(docs, shape, dtype, args.device, args.span), L, shape, args, args.span, args.device)
        srow["fast_share_of_matmul_peak"] = _sig(srow["fast_tflops"] / peak)
        out["span_row"] = srow
        _partial(args, out)
    if args.nnsight:
        sample = [(ids, s) for sv, (ids, _) in zip(_sites(docs, shape, dtype, args.device, 1), docs) for s in sv][: args.naive_sites]
        out.update(time_nnsight(m, sample, L, out["naive_seconds_extrapolated"] / out["sites"] * len(sample)))
    if args.fidelity:
        t = time.perf_counter()
        out["fidelity"] = fidelity(m, shape, L, args.device, 1)
        if args.fidelity_span and args.span and args.span > 1:
            out["fidelity_span"] = fidelity(m, shape, L, args.device, args.span)
        out["fidelity_seconds"] = round(time.perf_counter() - t, 1)
    if cuda:
        out["peak_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 1)
    return out


def _partial(args, out: dict) -> None:
    """Write what is known so far (a run cut short by a time limit still leaves its figures)."""
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


def time_nnsight(m, sample, layer, naive_sample_s) -> dict:
    """The naive computation written the way a researcher would with nnsight: a trace per variant."""
    try:
        from nnsight import NNsight
    except ImportError:
        return {"nnsight": "not installed (pip install -e '.[bench]')"}
    net = NNsight(m.model)
    t = time.time()
    for ids, s in sample:
        end = min(s.position + 32, len(ids))
        x = torch.tensor([ids[:end]], device=m.device)
        for v in s.vectors:  # one trace per variant, LM head only at the readout positions
            with net.trace(x, logits_to_keep=end - s.position):
                out = net.model.layers[layer].output  # transformers 5.x blocks return a tensor
                out = out[0] if isinstance(out, tuple) else out
                out[:, s.position] = v
                net.lm_head.output.save()
    dt = time.time() - t
    return {"nnsight_seconds_sample": round(dt, 3), "nnsight_vs_naive": round(dt / naive_sample_s, 2)}


def _fmt_fid(name: str, f: dict) -> str:
    def s(d):
        return f"median {d['median']:.2e}, p90 {d['p90']:.2e}, max {d['max']:.2e}" if d["n"] else "none"

    return (f"fidelity ({name}, span {f['span']}, {f['sites']} sites x {f['variants']} variants, |dKL| vs float32 naive):\n"
            f"  fast low vs ref:   {s(f['fast_low_vs_ref'])}\n  naive low vs ref:  {s(f['naive_low_vs_ref'])}\n"
            f"  fast vs naive low: {s(f['fast_low_vs_naive_low'])}\n  fast f32 vs ref:   {s(f['fast_f32_vs_ref'])}\n"
            f"  clean re-patch floor, fast: offset 0 {s(f['floor_fast_low_offset0'])}; all offsets max {f['floor_fast_low_all_offsets']['max']:.2e}\n"
            f"  clean re-patch floor, naive: offset 0 {s(f['floor_naive_low_offset0'])}; all offsets max {f['floor_naive_low_all_offsets']['max']:.2e}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="cpu")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--docs", type=int, default=None, help="override the shape's number of documents")
    ap.add_argument("--sites-per-doc", dest="sites_per_doc", type=int, default=None)
    ap.add_argument("--naive-sites", type=int, default=20, help="sites timed on the naive path (extrapolated)")
    ap.add_argument("--sites-per-batch", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=1, help="time each path this many times and keep the fastest (a shared box)")
    ap.add_argument("--span", type=int, default=None, help="also time spans of this many positions (a second row)")
    ap.add_argument("--fidelity", action="store_true", help="compare with a float32 naive reference on the same weights")
    ap.add_argument("--fidelity-span", dest="fidelity_span", action="store_true",
                    help="with --fidelity and --span K: the fidelity comparison for spans of K too")
    ap.add_argument("--nnsight", action="store_true", help="also time the naive computation through nnsight")
    ap.add_argument("--json", help="write the figures here too (updated after each stage)")
    args = ap.parse_args(argv)
    if args.sites_per_batch != "auto":
        args.sites_per_batch = int(args.sites_per_batch)
    out = run(args)
    print(json.dumps(out, indent=2))
    peak = out["matmul_peak_tflops"]
    rows = [("span 1", out)] + ([(f"span {out['span_row']['span']}", out["span_row"])] if "span_row" in out else [])
    print(f"\n{out['sites']} sites x {N_VARIANTS} variants on {out['device_name']} ({out['dtype']}); matmul peak {peak} TFLOP/s")
    for name, r in rows:
        print(f"{name}: fast {r['fast_seconds']} s ({r['fast_sites_per_s']} sites/s, {r['fast_tflops']} TFLOP/s = "
              f"{100 * r['fast_share_of_matmul_peak']:.0f}% of peak), naive {r['naive_seconds_extrapolated']} s ({r['naive_tflops']} TFLOP/s) -> "
              f"{r['speedup_measured']}x measured vs {r['speedup_flop_limit']}x FLOP limit = {100 * r['share_of_flop_limit']:.0f}% of the limit; "
              f"max |dKL| {r['max_abs_dKL_fast_vs_naive']:.2e}")
        if "speedup_cpu_time" in r:
            print(f"  by this process's CPU time: fast {r['fast_cpu_seconds']} s, naive {r['naive_cpu_seconds_extrapolated']} s -> "
                  f"{r['speedup_cpu_time']}x = {100 * r['share_of_flop_limit_cpu_time']:.0f}% of the limit")
    print(f"clean passes alone: {out['clean_pass_seconds']} s of the fast path's {out['fast_seconds']} s")
    for key in ("fidelity", "fidelity_span"):
        if key in out:
            print(_fmt_fid(out["dtype"], out[key]))
    if "nnsight_vs_naive" in out:
        print(f"nnsight (a trace per variant) took {out['nnsight_vs_naive']}x the naive path's time on the same sites, "
              f"so fast vs nnsight = {out['speedup_measured'] * out['nnsight_vs_naive']:.1f}x")
    _partial(args, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
