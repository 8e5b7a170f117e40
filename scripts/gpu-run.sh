#!/usr/bin/env bash
# Runs kiln's GPU suite from a bundle made by scripts/gpu-bundle.sh, on a
# machine with an NVIDIA GPU. Writes logs and summary.md to $OUT (default
# ./gpu-results). Usage: run.sh [suite...]; suites: doctor tests bench
# sanitizer (default: doctor tests).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$PWD/gpu-results}
mkdir -p "$out"
export KILN_CACHE_DIR=${KILN_CACHE_DIR:-/tmp/kiln-cache}
suites=${*:-doctor tests}
summary="$out/summary.md"
commit=$(cat "$here/COMMIT" 2>/dev/null || echo unknown)
{
  echo "# kiln GPU suite"
  echo "commit $commit, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/GPU: /'
  echo
} > "$summary"
failed=0

for suite in $suites; do
  case "$suite" in
  doctor)
    start=$(date +%s%N)
    "$here/kiln" doctor > "$out/doctor.txt" 2>&1; rc=$?
    cat "$out/doctor.txt"
    "$here/kiln" doctor --json > "$out/doctor.json" 2>/dev/null
    echo "- doctor: $([ $rc = 0 ] && echo PASS || echo FAIL) ($(( ($(date +%s%N) - start) / 1000000 )) ms)" >> "$summary"
    [ $rc = 0 ] || failed=1
    ;;
  tests)
    for t in "$here"/tests/*; do
      name=$(basename "$t")
      start=$(date +%s%N)
      # Every test, the GPU ones included; one at a time, they share the GPU.
      "$t" --include-ignored --test-threads=1 > "$out/test-$name.log" 2>&1; rc=$?
      ms=$(( ($(date +%s%N) - start) / 1000000 ))
      line=$(grep -E "^test result:" "$out/test-$name.log" | tail -1)
      echo "- $name: $([ $rc = 0 ] && echo PASS || echo FAIL) — ${line:-no result line} (${ms} ms)" >> "$summary"
      if [ $rc != 0 ]; then
        failed=1
        grep -E "^test .* FAILED|panicked" "$out/test-$name.log" | head -20 | sed 's/^/    /' >> "$summary"
      fi
    done
    ;;
  sanitizer)
    for t in "$here"/tests/*gpu*; do
      name=$(basename "$t")
      /usr/local/cuda/bin/compute-sanitizer --tool memcheck --error-exitcode 99 \
        "$t" --include-ignored --test-threads=1 > "$out/sanitizer-$name.log" 2>&1; rc=$?
      errs=$(grep -c "========= Invalid\|========= Program hit" "$out/sanitizer-$name.log" || true)
      echo "- compute-sanitizer memcheck $name: $([ $rc = 0 ] && echo CLEAN || echo "FAIL rc=$rc") ($errs reports)" >> "$summary"
      [ $rc = 0 ] || failed=1
    done
    ;;
  bench)
    "$here/kiln" kernels bench --json "$out/bench.json" > "$out/bench.txt" 2>&1; rc=$?
    cat "$out/bench.txt"
    echo "- kernels bench: $([ $rc = 0 ] && echo DONE || echo FAIL)" >> "$summary"
    [ $rc = 0 ] || failed=1
    if [ -f "$here/bench/torch_ops.py" ]; then
      python3 "$here/bench/torch_ops.py" --json "$out/torch_bench.json" > "$out/torch_bench.txt" 2>&1; rc=$?
      tail -60 "$out/torch_bench.txt"
      echo "- torch bench: $([ $rc = 0 ] && echo DONE || echo FAIL)" >> "$summary"
    fi
    ;;
  *)
    echo "unknown suite '$suite' (doctor tests bench sanitizer)" >&2; exit 2 ;;
  esac
done

echo >> "$summary"
echo "overall: $([ $failed = 0 ] && echo PASS || echo FAIL)" >> "$summary"
cat "$summary"
exit $failed
