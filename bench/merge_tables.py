#!/usr/bin/env python3
"""Puts `kiln kernels bench --json` and `bench/torch_ops.py --json` side by
side as a Markdown table: kiln µs, % of peak, × launch floor, PyTorch eager,
torch.compile and Liger µs, and kiln's speedup over the best of them.

Usage: python3 bench/merge_tables.py kiln.json torch.json > table.md
"""
import json
import sys


def main():
    kiln = json.load(open(sys.argv[1]))
    torch = json.load(open(sys.argv[2])) if len(sys.argv) > 2 else {"rows": []}
    other = {}
    for r in torch["rows"]:
        other.setdefault((r["op"], r["model"], r["t"]), {})[r["impl"]] = r["median_us"]
    print(f"Device: {kiln['device']['name']}; measured peak {kiln['peak_bytes_per_s'] / 1e12:.2f} TB/s; "
          f"launch floor {kiln['launch_floor_us']:.2f} µs; torch {torch.get('torch', 'n/a')}\n")
    print("| op | model | dims | T | kiln µs | % peak | × floor | % copy | eager µs | compile µs | Liger µs | kiln vs best |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in kiln["rows"]:
        o = other.get((r["op"], r["model"], r["t"]), {})
        cell = lambda k: f"{o[k]:.2f}" if k in o else "–"
        best = min(o.values()) if o else None
        ratio = f"{best / r['median_us']:.2f}×" if best else "–"
        copy = f"{r['pct_copy']:.1f}" if r.get("pct_copy") else "–"
        print(f"| {r['op']} | {r['model']} | {r['dims']} | {r['t']} | {r['median_us']:.2f} | {r['pct_peak']:.1f} | "
              f"{r['x_floor']:.2f} | {copy} | {cell('eager')} | {cell('compile')} | {cell('liger')} | {ratio} |")


if __name__ == "__main__":
    main()
