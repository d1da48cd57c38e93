#!/usr/bin/env python
"""Benchmark the patch stage: fast path vs the naive reference, and vs the FLOP-count limit.

Builds a randomly initialised Gemma-3-architecture model of a chosen shape and synthetic
documents, patches the same sites with both paths in one process, checks they agree, and prints:
sites/s of each path, the measured speed-up, the speed-up the FLOP count allows for those same
sites (tokens x blocks each path must compute, attention and LM head included), and the ratio
of the two. The naive path is timed on a sample of sites (``--naive-sites``) and extrapolated.

    python benchmarks/bench_patch.py --shape cpu          # 18 blocks, d 256, ~600-token docs
    python benchmarks/bench_patch.py --shape 27b --device cuda --dtype bfloat16   # gemma-3-27b shape, 1000 sites
    python benchmarks/bench_patch.py --shape tiny         # seconds; what the tests run
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass

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


def build_model(shape: dict, dtype: torch.dtype, device: str, seed: int = 0):
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
    model = model.to_empty(device=device).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.zero_()
            else:
                p.normal_(0.0, 0.02)
        model.model.norm.weight.fill_(20.0)  # logits of order +-10..30 so KL and the soft-cap are exercised
    # non-persistent buffers (rotary inv_freq, embedding scale) were left empty by to_empty: rebuild them
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RotaryEmbedding

    model.model.rotary_emb = Gemma3RotaryEmbedding(cfg, device=device)
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


def path_flops(shape: dict, docs) -> tuple[float, float]:
    """FLOPs each path must do for these sites: (naive, fast).

    Per token and block: the linear maps plus attention over the keys the token may see
    (t + 1 in global blocks, min(t + 1, W) in sliding ones); the LM head at readout positions.
    """
    L, n, W, d, V = shape["layer"], shape["num_hidden_layers"], shape["sliding_window"], shape["hidden_size"], shape["vocab_size"]
    kinds = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n)]
    head = 2 * d * V
    linear = flops_per_token_layer(shape, 0)
    per_key = flops_per_token_layer(shape, 1) - linear

    def span(a: int, b: int, blocks) -> float:
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
        fast += span(0, min(T, max(positions) + 32), range(n))  # one clean pass through the last window
        for p in positions:
            w = min(32, T - p)
            fast += w * head + N_VARIANTS * (span(p, p + w, range(L + 1, n)) + w * head)
            naive += (N_VARIANTS + 1) * (span(0, p + w, range(n)) + w * head)  # every variant and the clean run
    return naive, fast


@dataclass
class Result:
    path: str
    sites: int
    seconds: float


def run(args) -> dict:
    from causal_kl.patching import SiteVariants, naive_site, patch_document

    shape = dict(SHAPES[args.shape])
    for k in ("docs", "sites_per_doc"):
        if getattr(args, k) is not None:
            shape[k] = getattr(args, k)
    dtype = getattr(torch, args.dtype)
    torch.set_num_threads(args.threads) if args.threads else None
    t0 = time.time()
    m = build_model(shape, dtype, args.device)
    docs = make_docs(shape)
    build_s = time.time() - t0
    L = shape["layer"]
    g = torch.Generator().manual_seed(1)
    site_sets = []
    for di, (ids, positions) in enumerate(docs):
        sv = []
        for k, p in enumerate(positions):
            v = (torch.randn(N_VARIANTS, shape["hidden_size"], generator=g) * 0.5).to(args.device, dtype)
            sv.append(SiteVariants(di * 1000 + k, p, [f"c{i}" for i in range(N_VARIANTS)], v))
        site_sets.append(sv)
    n_sites = sum(len(s) for s in site_sets)

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    # warm-up on the first document (kernels, allocator)
    patch_document(m, docs[0][0], L, site_sets[0][:1], "fast", args.sites_per_batch)
    sync()
    t = time.time()
    fast = {}
    for (ids, _), sv in zip(docs, site_sets):
        for r in patch_document(m, ids, L, sv, "fast", args.sites_per_batch):
            fast[r.site_id] = r
    sync()
    fast_s = time.time() - t

    sample = [(ids, s) for (ids, _), sv in zip(docs, site_sets) for s in sv]
    random.Random(0).shuffle(sample)
    sample = sample[: args.naive_sites]
    t = time.time()
    naive = [naive_site(m, ids, L, s) for ids, s in sample]
    sync()
    naive_s = (time.time() - t) / len(sample) * n_sites
    dkl = max(float(np.nanmax(np.abs(fast[r.site_id].kl - r.kl))) for r in naive)
    med_kl = float(np.nanmedian(np.concatenate([r.kl.ravel() for r in naive])))
    fl_naive, fl_fast = path_flops(shape, docs)
    out = {
        "shape": args.shape, "device": args.device, "dtype": args.dtype,
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU x{torch.get_num_threads()} threads",
        "sites": n_sites, "docs": len(docs), "variants_per_site": N_VARIANTS, "build_seconds": round(build_s, 1),
        "fast_seconds": round(fast_s, 3), "naive_seconds_extrapolated": round(naive_s, 3), "naive_sites_timed": len(sample),
        "fast_sites_per_s": round(n_sites / fast_s, 2), "naive_sites_per_s": round(n_sites / naive_s, 3),
        "speedup_measured": round(naive_s / fast_s, 2), "speedup_flop_limit": round(fl_naive / fl_fast, 2),
        "share_of_flop_limit": round((naive_s / fast_s) / (fl_naive / fl_fast), 3),
        "max_abs_dKL_fast_vs_naive": dkl, "median_KL_naive": med_kl,
    }
    if args.nnsight:
        out.update(time_nnsight(m, sample, L, naive_s / n_sites * len(sample)))
    return out


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
    ap.add_argument("--nnsight", action="store_true", help="also time the naive computation through nnsight")
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args(argv)
    if args.sites_per_batch != "auto":
        args.sites_per_batch = int(args.sites_per_batch)
    out = run(args)
    print(json.dumps(out, indent=2))
    print(f"\n{out['sites']} sites on {out['device_name']} ({out['dtype']}): fast {out['fast_seconds']} s "
          f"({out['fast_sites_per_s']} sites/s), naive {out['naive_seconds_extrapolated']} s -> "
          f"{out['speedup_measured']}x measured vs {out['speedup_flop_limit']}x FLOP limit = "
          f"{100 * out['share_of_flop_limit']:.0f}% of the limit; max |dKL| {out['max_abs_dKL_fast_vs_naive']:.2e}")
    if "nnsight_vs_naive" in out:
        print(f"nnsight (a trace per variant) took {out['nnsight_vs_naive']}x the naive path's time on the same sites, "
              f"so fast vs nnsight = {out['speedup_measured'] * out['nnsight_vs_naive']:.1f}x")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
