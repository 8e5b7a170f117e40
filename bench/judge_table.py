#!/usr/bin/env python3
"""Markdown tables of the judge's before/after figures from the raw outputs of
scripts/gpu-judge-ab.sh (controls.tsv, throughput.tsv) and of the red-team GPU
test log. Usage: judge_table.py [--controls F] [--throughput F] [--red-team LOG]"""
import argparse
import re


def rows(path):
    with open(path) as f:
        lines = [l.rstrip("\n").split("\t") for l in f if l.strip()]
    return lines[0], lines[1:]


def controls(path):
    head, body = rows(path)
    print("| control | target | reward before | reward after |")
    print("|---|---|---:|---:|")
    for r in body:
        print("| " + " | ".join(r) + " |")


def throughput(path):
    head, body = rows(path)
    print("| run | binary | candidates | seconds | candidates/min |")
    print("|---:|---|---:|---:|---:|")
    for i, r in enumerate(body):
        print(f"| {i // 2 + 1} | {r[0]} | {r[1]} | {r[2]} | **{r[3]}** |")


def red_team(path):
    pat = re.compile(r"^(\S+)\s+(\S+)\s+expected (\S+)\s+got (\S+)")
    by_stage, wrong, n = {}, [], 0
    for line in open(path):
        m = pat.match(line)
        if not m:
            continue
        n += 1
        name, target, want, got = m.groups()
        by_stage[want] = by_stage.get(want, 0) + 1
        if want != got:
            wrong.append(f"{name} ({target}): expected {want}, got {got}")
    print(f"{n} files; expected stage: " + ", ".join(f"{k} {v}" for k, v in sorted(by_stage.items())))
    print()
    print("Mismatches: " + ("none" if not wrong else "; ".join(wrong)))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--controls")
    ap.add_argument("--throughput")
    ap.add_argument("--red-team")
    a = ap.parse_args()
    for fn, arg in ((controls, a.controls), (throughput, a.throughput), (red_team, a.red_team)):
        if arg:
            fn(arg)
            print()
