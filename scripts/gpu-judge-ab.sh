#!/usr/bin/env bash
# The judge before and after a change, on one GPU in one run: every honest
# red-team control through `kiln discover eval` with both binaries (rewards
# side by side), then an offline autorun over the Qwen3 targets with each
# binary (candidates per minute), old and new interleaved so drift hits both.
#
#   OLD=path/to/old/kiln NEW=path/to/new/kiln RED_TEAM=dir scripts/gpu-judge-ab.sh
#
# Writes controls.tsv, throughput.tsv and the raw outputs under $OUT.
set -uo pipefail
out=${OUT:-$PWD/gpu-results}
old=${OLD:?OLD=path to the previous kiln binary}
new=${NEW:?NEW=path to the current kiln binary}
red=${RED_TEAM:?RED_TEAM=folder of red-team kernels}
targets=${AB_TARGETS:-qwen3_rmsnorm,qwen3_fused_swiglu,qwen3_moe_combine,qwen3_topk_gating}
steps=${AB_STEPS:-5}
mkdir -p "$out/ab"
export KILN_CACHE_DIR=${KILN_CACHE_DIR:-/tmp/kiln-cache}

reward() { # FILE -> reward or the failed stage
  python3 -c '
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except Exception as e:
    print("no-record"); sys.exit()
rec = r.get("Scored", r)
st = rec.get("status", {})
if isinstance(st, dict) and "Failed" in st:
    print("failed:" + str(st["Failed"].get("stage")))
elif "MachineryFailure" in r:
    print("machinery")
else:
    print("%.3f" % rec.get("reward", float("nan")))
' "$1"
}

printf 'control\ttarget\told\tnew\n' > "$out/controls.tsv"
# AB_SKIP_CONTROLS=1 times only the autoruns.
for f in "$red"/*.cu; do
  [ "${AB_SKIP_CONTROLS:-0}" = 1 ] && break
  grep -q '^// expect: pass' "$f" || continue
  name=$(basename "$f" .cu)
  target=$(sed -n 's|^// target: *||p' "$f" | head -1)
  target=${target:-qwen3_rmsnorm}
  "$old" discover eval "$target" "$f" --seed 7 --json > "$out/ab/$name.old.json" 2> "$out/ab/$name.old.err"
  "$new" discover eval "$target" "$f" --seed 7 --json > "$out/ab/$name.new.json" 2> "$out/ab/$name.new.err"
  printf '%s\t%s\t%s\t%s\n' "$name" "$target" "$(reward "$out/ab/$name.old.json")" \
    "$(reward "$out/ab/$name.new.json")" >> "$out/controls.tsv"
done
column -t "$out/controls.tsv" 2>/dev/null || cat "$out/controls.tsv"

printf 'binary\tcandidates\tseconds\tper_minute\n' > "$out/throughput.tsv"
# AB_SKIP_AUTORUN=1 compares only the controls.
for which in old new old new; do
  [ "${AB_SKIP_AUTORUN:-0}" = 1 ] && break
  bin=$old; [ "$which" = new ] && bin=$new
  dir=$(mktemp -d)
  start=$(date +%s.%N)
  "$bin" discover autorun --targets "$targets" --steps "$steps" --session-dir "$dir" \
    > "$out/ab/autorun-$which.txt" 2>&1
  end=$(date +%s.%N)
  n=$(python3 -c '
import glob, json, sys
n = 0
for p in glob.glob(sys.argv[1] + "/*/session.json"):
    def find(o):
        if isinstance(o, dict):
            if "candidates_evaluated" in o:
                return o["candidates_evaluated"]
            for v in o.values():
                r = find(v)
                if r is not None:
                    return r
        return None
    n += find(json.load(open(p))) or 0
print(n)' "$dir")
  python3 -c 'import sys; n, a, b = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]); print("%s\t%d\t%.1f\t%.1f" % (sys.argv[4], n, b - a, 60 * n / (b - a)))' \
    "$n" "$start" "$end" "$which" >> "$out/throughput.tsv"
  cp "$dir/autorun_summary.json" "$out/ab/autorun_summary-$which.json" 2>/dev/null
  # Where the time goes: mean milliseconds per stage per target.
  python3 -c '
import glob, json, sys
for p in sorted(glob.glob(sys.argv[1] + "/*/session.json")):
    nodes = json.load(open(p)).get("tree", {}).get("nodes", [])
    t = [n["eval"].get("timings", {}) for n in nodes if isinstance(n.get("eval"), dict)]
    mean = lambda k: sum((x.get(k) or 0) for x in t) / max(len(t), 1)
    print("%s %s compile %.0f verify %.0f time %.0f ms (n=%d)" % (sys.argv[2], p.split("/")[-2], mean("compile_ms"), mean("verify_ms"), mean("time_ms"), len(t)))
' "$dir" "$which" >> "$out/stages.txt"
  rm -rf "$dir"
done
column -t "$out/throughput.tsv" 2>/dev/null || cat "$out/throughput.tsv"
cat "$out/stages.txt"
