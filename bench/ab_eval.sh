#!/usr/bin/env bash
# A/B of kernel files against the catalog kernels the `kiln` binary was built
# with: for each DIR/<target>.cu (or DIR/kernel.cu against every target named
# in DIR/targets, one per line), `kiln discover eval <target>` times it
# interleaved with the catalog baseline in one worker and prints, per shape,
# candidate µs, catalog µs and their ratio (below 1: the candidate is faster).
#   bench/ab_eval.sh KILN_BINARY DIR
set -uo pipefail
kiln=$1
dir=$2
pairs() {
  for f in "$dir"/*.cu; do
    if [ "$(basename "$f")" = kernel.cu ] && [ -f "$dir/targets" ]; then
      while read -r t; do [ -n "$t" ] && echo "$t $f"; done < "$dir/targets"
    else
      echo "$(basename "$f" .cu) $f"
    fi
  done
}
pairs | while read -r target f; do
  "$kiln" discover eval "$target" "$f" --json 2>/dev/null </dev/null | python3 -c '
import json, sys
target, name = sys.argv[1], sys.argv[2]
try:
    r = json.load(sys.stdin)
except ValueError:
    print(f"{target:<22} {name}: no record (eval failed)")
    sys.exit(0)
status = r.get("status")
shapes = r.get("per_shape") or []
for s in shapes:
    c, b = s.get("median_us"), s.get("baseline_median_us")
    if c and b:
        shape = s["shape"]["name"]
        print(f"{name:<20} {target:<20} {shape:<12} candidate {c:8.2f} us  catalog {b:8.2f} us  candidate/catalog time {c / b:5.2f}")
if not shapes:
    print(f"{target:<22} {name}: {status} {json.dumps(r)[:300]}")
' "$target" "$(basename "$dir")"
done
