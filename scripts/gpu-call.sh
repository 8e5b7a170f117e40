#!/usr/bin/env bash
# One device-tool call's worth of suites: runs `gpu-bundle/run.sh` once per
# argument (each "SUITES[:ENV=VAL,...]" in its own results folder), then packs
# every folder into $OUT/results.tgz and the summaries into $OUT/summary.txt,
# since only a few files come back from the GPU machine.
#   scripts/gpu-call.sh "tests:KILN_TESTS=kiln-kernels-gpu_ops" "models:KILN_VALIDATE_ARGS=--layers 2"
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$PWD/gpu-results}
mkdir -p "$out"
i=${FIRST_RUN:-0}
for spec in "$@"; do
  i=$((i + 1))
  suites=${spec%%:*}
  envs=""
  [ "$spec" != "$suites" ] && envs=${spec#*:}
  dir="$out/run-$i"
  mkdir -p "$dir"
  (
    IFS=';'
    for kv in $envs; do export "${kv?}"; done
    unset IFS
    # shellcheck disable=SC2086
    OUT="$dir" "$root/gpu-bundle/run.sh" $suites
  ) > "$dir/console.txt" 2>&1
  { echo "## run-$i: $spec"; cat "$dir/summary.md" 2>/dev/null; echo; } >> "$out/summary.txt"
done
tar czf "$out/${RESULTS:-results}.tgz" -C "$out" $(cd "$out" && ls -d run-*)
rm -rf "$out"/run-*
cat "$out/summary.txt"
