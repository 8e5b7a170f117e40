#!/usr/bin/env python3
"""Per-kernel times of one kiln decode step from an Nsight Compute CSV.

Usage: python3 bench/ncu_step.py NCU.csv[.gz]

The CSV comes from `ncu --csv --print-units base --cache-control none
--clock-control none --metrics gpu__time_duration.sum kiln-models validate ...`.
A forward pass starts at each embedding gather (candle's `is_u32_*` kernel);
kiln's single-token steps are those that write the KV cache and run kiln's
own projection kernel (`linear_gemv` takes at most 8 rows: prefill goes to
cuBLAS). The last such step is printed kernel by kernel (µs, grid), with
the layer-independent head and tail and the per-layer sum.
"""

import csv
import gzip
import sys


def rows(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        lines = [l for l in f if l.startswith('"')]
    table = list(csv.reader(lines))
    head, body = table[0], table[1:]
    ki, vi, gi = head.index("Kernel Name"), head.index("Metric Value"), head.index("Grid Size")
    return [(r[ki][:48], float(r[vi].replace(",", "")) / 1000.0, r[gi]) for r in body]


def main():
    seq = rows(sys.argv[1])
    starts = [i for i, s in enumerate(seq) if s[0].startswith("is_")]
    steps = [seq[a:b] for a, b in zip(starts, starts[1:] + [len(seq)])]
    single = [
        s for s in steps
        if any("kv_cache_write" in k or "qk_norm_rope_cache" in k for k, _, _ in s)
        and any(k == "linear_gemv" for k, _, _ in s)
    ]
    if not single:
        sys.exit("no single-token kiln step in this profile")
    step = single[-1]
    print(f"{'µs':>8}  kernel (grid)")
    for k, us, g in step:
        print(f"{us:8.2f}  {k} {g}")
    print(f"{sum(us for _, us, _ in step):8.2f}  total ({len(step)} kernels)")


if __name__ == "__main__":
    main()
