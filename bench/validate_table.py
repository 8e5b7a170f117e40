#!/usr/bin/env python3
"""Markdown tables from `kiln validate` reports (validate_<model>.json).

Usage: python3 bench/validate_table.py REPORT.json... [--commit C] [--command CMD]

One table per report: each configuration's decode mode, median decode
tokens/s, run-to-run spread (p90/p10 - 1), host ms per token, prefill
tokens/s, the share of the speed of light (the measured DRAM peak over the
active weight bytes per token), and its fidelity verdict. The header line
names the card and what ran, so a table pasted into docs/BENCHMARKS.md
carries its provenance.
"""

import argparse
import json
import sys


def spread(c):
    """p90/p10 - 1 as reported, or computed from the runs for older reports."""
    if "decode_tps_spread" in c:
        return f"{100 * c['decode_tps_spread']:.1f} %"
    runs = sorted(c.get("decode_tps_runs", []))
    if len(runs) < 2:
        return "-"
    def q(p):
        x = p * (len(runs) - 1)
        lo, hi = int(x), min(int(x) + 1, len(runs) - 1)
        return runs[lo] + (runs[hi] - runs[lo]) * (x - lo)
    return f"{100 * (q(0.9) / q(0.1) - 1):.1f} %"


def table(report, commit, command):
    bw = report.get("peak_bandwidth")
    active = report["active_weight_bytes"]
    sol = bw / active if bw else None
    out = []
    out.append(
        f"**{report['model']}** on {report['device']}: prompt {report['prompt_tokens']} "
        f"tokens, {report['max_tokens']} decoded, "
        f"{len(report['configs'][0]['decode_tps_runs'])} runs per configuration"
        + (f"; speed of light {sol:.0f} tok/s ({bw / 1e12:.2f} TB/s, "
           f"{active / 1e9:.2f} GB per token)" if sol else "")
        + (f"; commit {commit}" if commit else "")
        + (f"; early launch {report['early_launch']}" if "early_launch" in report else "")
        + (f"; gemv epilogues {report['gemv_fusion']}" if "gemv_fusion" in report else "")
        + (f"; rope + cache write fused {report['rope_cache_fusion']}" if "rope_cache_fusion" in report else "")
        + (f"; norms in the projections {report['norm_fusion']}" if report.get("norm_fusion") else "")
        + (f"; routers in the projections {report['router_fusion']}" if report.get("router_fusion") else "")
        + (f"; gemv K-loop unroll {report['gemv_unroll']}" if report.get("gemv_unroll") else "")
        + (f"; MLA key + rope + cache write fused {report['mla_rope_cache_fusion']}" if report.get("mla_rope_cache_fusion") else "")
        + "."
    )
    if command:
        out.append(f"Command: `{command}`.")
    out.append("")
    out.append("| configuration | decode | tok/s | spread | host ms/token | prefill tok/s | % SoL | fidelity |")
    out.append("|---|---|---:|---:|---:|---:|---:|---|")
    for c in report["configs"]:
        pct = f"{100 * c['decode_tps'] / sol:.1f}" if sol else "-"
        verdict = c.get("verdict", "").replace("_", " ")
        if verdict in ("pass", "fail"):
            verdict = verdict.upper()
        reason = c.get("verdict_reason", "")
        fidelity = f"{verdict}: {reason}" if verdict else (
            f"no verdict (this build gave none); TF top-1 {100 * c['tf_top1_agreement']:.0f} %, "
            f"max |Δlogit| {c['tf_max_abs_logit_diff']:.3f}")
        out.append(
            f"| {c['name']} | {c.get('decode', 'eager')} | {c['decode_tps']:.1f} | "
            f"{spread(c)} | {c['host_ms_per_token']:.2f} | "
            f"{c['prefill_tps']:.0f} | {pct} | {fidelity.replace('|', chr(92) + '|')} |"
        )
    nf = report.get("noise_floor")
    if nf:
        out.append("")
        out.append(
            f"Noise floor (the baseline on its weights rounded toward zero): teacher-forced "
            f"max |Δlogit| {nf['tf_max_abs_logit_diff']:.3f}, top-1 {100 * nf['tf_top1_agreement']:.0f} %."
        )
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("reports", nargs="+")
    p.add_argument("--commit", default="")
    p.add_argument("--command", default="")
    a = p.parse_args()
    parts = []
    for path in a.reports:
        with open(path) as f:
            parts.append(table(json.load(f), a.commit, a.command))
    sys.stdout.write("\n\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
