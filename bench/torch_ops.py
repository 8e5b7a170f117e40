#!/usr/bin/env python3
"""PyTorch side of `kiln kernels bench`: the same ops, shapes and timing method
(CUDA graphs of launches, input sets rotated beyond L2 for large shapes, median
per launch) for PyTorch eager, torch.compile and Liger-Kernel (where Liger has
the op). Writes JSON rows {op, model, t, impl, median_us}.

Every call in a captured graph keeps its output alive, so each writes to its own
buffer, as kiln's rotated sets do. With --reuse-outputs the outputs are dropped
at once, the caching allocator hands the next call the same buffer, and a large
op's writes can land on lines still in L2: faster than DRAM, and not what kiln
measures.

Usage: python3 bench/torch_ops.py [--json FILE] [--t 1,4,16,64,512,4096]
"""
import argparse
import json
import math
import statistics
import sys

import torch
import torch.nn.functional as F

BF = torch.bfloat16
DEV = "cuda"


def rmsnorm(x, w, eps):
    x32 = x.float()
    var = x32.pow(2).mean(-1, keepdim=True)
    return w * (x32 * torch.rsqrt(var + eps)).to(x.dtype)


def add_rmsnorm(x, r, w, eps):
    h = x + r
    return rmsnorm(h, w, eps), h


def swiglu(g, u):
    return F.silu(g) * u


def swiglu_packed(gu):
    g, u = gu.chunk(2, dim=-1)
    return F.silu(g) * u


def softmax_topk(logits, k):
    p = torch.softmax(logits.float(), dim=-1)
    w, i = torch.topk(p, k, dim=-1)
    return w / w.sum(-1, keepdim=True), i


def sigmoid_topk(logits, bias, k, eps, scale, in_dtype):
    if in_dtype:
        s = torch.sigmoid(logits)
        i = torch.topk(s.float() + bias, k, dim=-1).indices
        w = s.gather(-1, i)
        return w / (w.sum(-1, keepdim=True) + eps) * scale, i
    s = torch.sigmoid(logits.float())
    i = torch.topk(s + bias, k, dim=-1).indices
    w = s.gather(-1, i)
    return w / (w.sum(-1, keepdim=True) + eps) * scale, i


def moe_combine(e, w, shared):
    out = (e.float() * w.unsqueeze(-1)).sum(1).to(e.dtype)
    return out if shared is None else out + shared


def rope(q, k, pos, cos_cache, sin_cache, interleaved):
    cos = cos_cache[pos].to(q.dtype).unsqueeze(1)
    sin = sin_cache[pos].to(q.dtype).unsqueeze(1)

    def rot(x):
        if interleaved:
            x1, x2 = x[..., 0::2], x[..., 1::2]
            c, s = cos[..., 0::2], sin[..., 0::2]
            return torch.stack((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).flatten(-2)
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin

    return rot(q), rot(k)


def rope_cache(dim, theta, n=32768):
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2, device=DEV).float() / dim))
    f = torch.outer(torch.arange(n, device=DEV).float(), inv)
    emb = torch.cat((f, f), dim=-1)
    return emb.cos(), emb.sin()


def cases():
    """(op, model, make(T) -> args, eager fn, liger fn or None)."""
    out = []
    try:
        from liger_kernel.ops.rms_norm import LigerRMSNormFunction
        from liger_kernel.ops.fused_add_rms_norm import LigerFusedAddRMSNormFunction
        from liger_kernel.ops.swiglu import LigerSiLUMulFunction
        liger = True
    except Exception as e:  # noqa: BLE001
        print(f"Liger-Kernel not importable ({e}); its columns stay empty", file=sys.stderr)
        liger = False
    for model, eps, inter, theta_dim in [
        ("Qwen3-30B-A3B", 1e-6, 768, (32, 4, 128, False)),
        ("GLM-4.7-Flash", 1e-5, 1536, (20, 1, 64, True)),
        ("LFM2-8B-A1B", 1e-5, 1792, (32, 8, 64, False)),
    ]:
        D = 2048
        w = torch.randn(D, device=DEV, dtype=BF)
        out.append(("rmsnorm", model, lambda t, w=w: (torch.randn(t, D, device=DEV, dtype=BF), w),
                    lambda x, w, eps=eps: rmsnorm(x, w, eps),
                    (lambda x, w, eps=eps: LigerRMSNormFunction.apply(x, w, eps, 0.0, "llama", False)) if liger else None))
        out.append(("add_rmsnorm", model,
                    lambda t, w=w: (torch.randn(t, D, device=DEV, dtype=BF), torch.randn(t, D, device=DEV, dtype=BF), w),
                    lambda x, r, w, eps=eps: add_rmsnorm(x, r, w, eps),
                    (lambda x, r, w, eps=eps: LigerFusedAddRMSNormFunction.apply(x, r, w, eps)) if liger else None))
        out.append(("swiglu", model,
                    lambda t, i=inter: (torch.randn(t, i, device=DEV, dtype=BF), torch.randn(t, i, device=DEV, dtype=BF)),
                    swiglu, (lambda g, u: LigerSiLUMulFunction.apply(g, u)) if liger else None))
        out.append(("swiglu_packed", model, lambda t, i=inter: (torch.randn(t, 2 * i, device=DEV, dtype=BF),),
                    swiglu_packed, None))
        qh, kh, hd, il = theta_dim
        cc, sc = rope_cache(hd, 1e6)
        out.append(("rope", model,
                    lambda t, qh=qh, kh=kh, hd=hd: (torch.randn(t, qh, hd, device=DEV, dtype=BF),
                                                    torch.randn(t, kh, hd, device=DEV, dtype=BF),
                                                    torch.randint(0, 32768, (t,), device=DEV)),
                    lambda q, k, p, cc=cc, sc=sc, il=il: rope(q, k, p, cc, sc, il), None))
    qk_w = torch.randn(128, device=DEV, dtype=BF)
    out.append(("rmsnorm", "Qwen3-30B-A3B qk", lambda t: (torch.randn(t, 128, device=DEV, dtype=BF), qk_w),
                lambda x, w: rmsnorm(x, w, 1e-6), None))
    out.append(("softmax_topk", "Qwen3-30B-A3B", lambda t: (torch.randn(t, 128, device=DEV, dtype=BF),),
                lambda l: softmax_topk(l, 8), None))
    gb = torch.randn(64, device=DEV) * 0.1
    out.append(("sigmoid_topk", "GLM-4.7-Flash", lambda t: (torch.randn(t, 64, device=DEV, dtype=torch.float32),),
                lambda l: sigmoid_topk(l, gb, 4, 1e-20, 1.8, False), None))
    lb = torch.randn(32, device=DEV) * 0.1
    out.append(("sigmoid_topk", "LFM2-8B-A1B", lambda t: (torch.randn(t, 32, device=DEV, dtype=BF),),
                lambda l: sigmoid_topk(l, lb, 4, 1e-6, 1.0, True), None))
    for model, k, shared in [("Qwen3-30B-A3B", 8, False), ("GLM-4.7-Flash", 4, True), ("LFM2-8B-A1B", 4, False)]:
        out.append(("moe_combine", model,
                    lambda t, k=k, shared=shared: (torch.randn(t, k, 2048, device=DEV, dtype=BF),
                                                   torch.rand(t, k, device=DEV),
                                                   torch.randn(t, 2048, device=DEV, dtype=BF) if shared else None),
                    moe_combine, None))
    return out


def nbytes(tree):
    """Bytes of every tensor in a (nested) tuple of arguments or results."""
    if isinstance(tree, torch.Tensor):
        return tree.numel() * tree.element_size()
    if isinstance(tree, (tuple, list)):
        return sum(nbytes(x) for x in tree)
    return 0


def time_fn(fn, make, t, l2_bytes, keep_outputs=True):
    """Median µs per call: a CUDA graph of calls over rotated input sets."""
    first = make(t)
    # Inputs and outputs, as kiln counts them: sets are rotated once they
    # stop fitting in L2, so large shapes are timed from DRAM.
    per_set = max(nbytes(first) + nbytes(fn(*first)), 1)
    n_sets = max(2, math.ceil(3 * l2_bytes / per_set)) if per_set * 2 >= l2_bytes else 1
    sets = [first] + [make(t) for _ in range(n_sets - 1)]
    rounds = max(1, math.ceil(20 / n_sets))
    per_graph = rounds * n_sets
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            for a in sets:
                fn(*a)
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    kept = []
    with torch.cuda.graph(g):
        for _ in range(rounds):
            for a in sets:
                out = fn(*a)
                if keep_outputs:
                    kept.append(out)
    for _ in range(3):
        g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(50):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / per_graph)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    ap.add_argument("--t", default="1,4,16,64,512,4096")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--ops", default="", help="comma-separated op names to time (default: all)")
    ap.add_argument("--models", default="", help="comma-separated model names (default: all)")
    ap.add_argument("--reuse-outputs", action="store_true",
                    help="let every call in a graph write the same output buffer (see the module doc)")
    args = ap.parse_args()
    only = {o for o in args.ops.split(",") if o}
    models = {m for m in args.models.split(",") if m}
    ts = [int(x) for x in args.t.split(",")]
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 50 * 2**20)
    rows = []
    outputs = "reused" if args.reuse_outputs else "kept"
    print(f"{props.name}, torch {torch.__version__}, outputs {outputs}", flush=True)
    for op, model, make, eager, liger in cases():
        if (only and op not in only) or (models and model not in models):
            continue
        impls = [("eager", eager)]
        if not args.no_compile:
            impls.append(("compile", torch.compile(eager, dynamic=True)))
        if liger is not None:
            impls.append(("liger", liger))
        for t in ts:
            line = [f"{op:<14} {model:<18} T={t:<5}"]
            for name, fn in impls:
                try:
                    us = time_fn(fn, make, t, l2, keep_outputs=not args.reuse_outputs)
                    rows.append({"op": op, "model": model, "t": t, "impl": name, "median_us": us})
                    line.append(f"{name} {us:8.2f}")
                except Exception as e:  # noqa: BLE001
                    line.append(f"{name} failed ({type(e).__name__}: {str(e)[:80]})")
            print("  ".join(line), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": props.name, "torch": torch.__version__, "outputs": outputs, "rows": rows}, f,
                  indent=1)


if __name__ == "__main__":
    main()
