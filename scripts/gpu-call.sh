#!/usr/bin/env bash
# One device-tool call's worth of suites: runs `gpu-bundle/run.sh` once per
# argument (each "SUITES[:ENV=VAL;ENV=VAL]" in its own results folder), and
# after each one packs every folder so far into $OUT/${RESULTS:-results}.tgz
# and appends its summary to $OUT/summary.txt: only a few files come back from
# the GPU machine, and a call cut off by its time limit still returns what
# finished. KILN_SPEC_LIMIT=SECONDS in an argument's settings stops that
# argument's suites after so long and still packs what they wrote (a
# `timeout` around this script would lose the argument's folder).
#   scripts/gpu-call.sh "tests:KILN_TESTS=kiln-kernels-gpu_ops" "models:KILN_VALIDATE_ARGS=--layers 2"
#   scripts/gpu-call.sh "tests:KILN_TESTS=kiln-cli-red_team;KILN_SPEC_LIMIT=300"
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$PWD/gpu-results}
work=$(mktemp -d)
mkdir -p "$out"
i=${FIRST_RUN:-0}
for spec in "$@"; do
  i=$((i + 1))
  suites=${spec%%:*}
  envs=""
  [ "$spec" != "$suites" ] && envs=${spec#*:}
  dir="$work/run-$i"
  mkdir -p "$dir"
  start=$(date +%s)
  (
    IFS=';'
    for kv in $envs; do export "${kv?}"; done
    unset IFS
    # shellcheck disable=SC2086
    OUT="$dir" timeout "${KILN_SPEC_LIMIT:-0}" "$root/gpu-bundle/run.sh" $suites
    rc=$?
    [ "$rc" = 124 ] && echo "- STOPPED after KILN_SPEC_LIMIT=${KILN_SPEC_LIMIT} s: the lines above are what finished" >> "$dir/summary.md"
  ) > "$dir/console.txt" 2>&1
  { echo "## run-$i: $spec ($(( $(date +%s) - start )) s)"; cat "$dir/summary.md" 2>/dev/null; echo; } >> "$out/summary.txt"
  tar czf "$out/${RESULTS:-results}.tgz" -C "$work" $(cd "$work" && ls -d run-*)
done
rm -rf "$work"
cat "$out/summary.txt"
