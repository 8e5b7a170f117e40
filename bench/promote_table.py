#!/usr/bin/env python3
"""Markdown table of `kiln discover promote` decisions (its decision log).

Usage: python3 bench/promote_table.py DISCOVERED-LOG.jsonl [--command CMD]

One row per winner judged: the model it ran in, catalog and winner decode
tokens/s (medians of interleaved runs), the gain, the larger of the two
run-to-run spreads (p90/p10 - 1) that the gain had to exceed, the fidelity
verdict against the noise floor, the kernel-level speedup, the decision and
the card and commit that judged it.
"""

import argparse
import json
import sys


def rows(path):
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"{path}:{n}: not a promote decision: {e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("log")
    ap.add_argument("--command", default="")
    a = ap.parse_args()
    print("| target | model | catalog tok/s | with winner tok/s | gain | spread | fidelity | kernel | decision | card | commit |")
    print("|---|---|---:|---:|---:|---:|---|---:|---|---|---|")
    for d in rows(a.log):
        ks = d.get("kernel_speedup")
        kernel = f"{ks:.2f}×" if ks else "—"
        trials = d.get("trials") or [None]
        for t in trials:
            if t is None:
                print(f"| {d['target']} | — | | | | | | {kernel} | {d['decision']}: {d['reason']} | | {d['commit']} |")
                continue
            gain = t["pack_tps"] / t["catalog_tps"] - 1 if t["catalog_tps"] else 0.0
            spread = max(t["catalog_spread"], t["pack_spread"])
            print(
                f"| {d['target']} | {t['model']} | {t['catalog_tps']:.1f} | {t['pack_tps']:.1f} "
                f"| {100 * gain:+.1f} % | {100 * spread:.1f} % | {t['pack_verdict']} | {kernel} "
                f"| {d['decision']} | {t['device']} | {d['commit']} |"
            )
    if a.command:
        print(f"\nCommand: `{a.command}`")


if __name__ == "__main__":
    main()
