#!/usr/bin/env bash
# Runs kiln's GPU suite from a bundle made by scripts/gpu-bundle.sh, on a
# machine with an NVIDIA GPU. Writes logs and summary.md to $OUT (default
# ./gpu-results). Usage: run.sh [suite...]; suites: doctor tests bench torch
# discover promote sanitizer models models-before kernelcheck moecheck ncu hf ab (default: doctor tests).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$PWD/gpu-results}
mkdir -p "$out"
export KILN_CACHE_DIR=${KILN_CACHE_DIR:-/tmp/kiln-cache}
# Tests that start GPU workers use the bundled binary and red-team kernels.
export KILN_BIN="$here/kiln"
export KILN_RED_TEAM="$here/red_team"
suites=${*:-doctor tests}
# kiln-models travels gzipped (candle's PTX makes it large).
if [ -f "$here/kiln-models.gz" ] && [ ! -x "$here/kiln-models" ]; then
  gunzip -c "$here/kiln-models.gz" > "$here/kiln-models" && chmod +x "$here/kiln-models"
fi
summary="$out/summary.md"
commit=$(cat "$here/COMMIT" 2>/dev/null || echo unknown)
# What promote writes as provenance: the bundle's commit, not whatever git the machine has.
export KILN_COMMIT=$commit
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
    # KILN_TESTS narrows the binaries by name (space-separated globs; default: all).
    for t in $(for pat in ${KILN_TESTS:-*}; do ls -d "$here"/tests/$pat 2>/dev/null; done | sort -u); do
      [ -x "$t" ] || continue
      name=$(basename "$t")
      start=$(date +%s%N)
      # Every test, the GPU ones included; one at a time, they share the GPU.
      # KILN_TEST_FILTER narrows the tests inside each binary (libtest filter).
      # shellcheck disable=SC2086
      "$t" --include-ignored --test-threads=1 --nocapture ${KILN_TEST_FILTER:-} > "$out/test-$name.log" 2>&1; rc=$?
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
    for t in "$here"/tests/${KILN_SANITIZE:-*gpu*}; do
      [ -x "$t" ] || continue
      name=$(basename "$t")
      # A few small odd row counts: the sanitizer slows kernels a hundredfold.
      # KILN_TEST_FILTER narrows the tests (libtest filters, space-separated).
      # shellcheck disable=SC2086
      KILN_GPU_ROWS=${KILN_GPU_ROWS:-1,3,37} timeout "${KILN_SANITIZER_LIMIT:-1800}" \
        /usr/local/cuda/bin/compute-sanitizer --tool memcheck \
        --error-exitcode 99 "$t" --include-ignored --test-threads=1 ${KILN_TEST_FILTER:-} > "$out/sanitizer-$name.log" 2>&1; rc=$?
      errs=$(grep -c "========= Invalid\|========= Program hit" "$out/sanitizer-$name.log" || true)
      line=$(grep -E "^test result:" "$out/sanitizer-$name.log" | tail -1)
      echo "- compute-sanitizer memcheck $name ${KILN_TEST_FILTER:-(all tests)}: $([ $rc = 0 ] && echo CLEAN || echo "FAIL rc=$rc") ($errs reports) — ${line:-no result line}" >> "$summary"
      [ $rc = 0 ] || failed=1
    done
    ;;
  bench)
    # KILN_BENCH_ARGS narrows it (e.g. "--op rmsnorm --t 1,16,4096").
    # shellcheck disable=SC2086
    "$here/kiln" kernels bench --json "$out/bench.json" ${KILN_BENCH_ARGS:-} > "$out/bench.txt" 2>&1; rc=$?
    tail -5 "$out/bench.txt"
    echo "- kernels bench: $([ $rc = 0 ] && echo DONE || echo FAIL)" >> "$summary"
    [ $rc = 0 ] || failed=1
    ;;
  torch)
    # PyTorch eager / torch.compile / Liger side by side (Liger from carried wheels on PYTHONPATH).
    # KILN_TORCH_ARGS narrows it (e.g. "--ops rmsnorm,swiglu --t 1,16,4096").
    # shellcheck disable=SC2086
    python3 "$here/bench/torch_ops.py" --json "$out/torch_bench.json" ${KILN_TORCH_ARGS:-} > "$out/torch_bench.txt" 2>&1; rc=$?
    tail -5 "$out/torch_bench.txt"
    echo "- torch bench: $([ $rc = 0 ] && echo DONE || echo FAIL)" >> "$summary"
    [ $rc = 0 ] || failed=1
    ;;
  discover)
    # Autorun over every target (offline proposer), then compare, report and export each session.
    dir=${KILN_SESSION_DIR:-/tmp/kiln-sessions}
    start=$(date +%s%N)
    timeout "${KILN_AUTORUN_LIMIT:-100000}" "$here/kiln" discover autorun --session-dir "$dir" \
      --steps "${KILN_STEPS:-10}" --candidates-per-step "${KILN_CPS:-4}" ${KILN_AUTORUN_ARGS:-} > "$out/autorun.txt" 2>&1; rc=$?
    tail -30 "$out/autorun.txt"
    "$here/kiln" discover compare "$dir" > "$out/compare.txt" 2>&1
    "$here/kiln" discover compare "$dir" --json > "$dir/compare.json" 2>&1
    for s in "$dir"/*/session.json; do
      "$here/kiln" discover report "$s" > /dev/null 2>&1
      "$here/kiln" discover export "$s" -o "$(dirname "$s")/winner.json" > /dev/null 2>&1
    done
    tar czf "$out/sessions.tgz" -C "$dir" .
    echo "- discover autorun: rc=$rc ($(( ($(date +%s%N) - start) / 1000000 )) ms)" >> "$summary"
    [ $rc = 0 ] || failed=1
    ;;
  promote)
    # kiln discover promote over the sessions the discover suite left (KILN_SESSION_DIR):
    # the discovered set, its decision log and changelog lines come back under $out/promote.
    if [ ! -x "$here/kiln-models" ]; then
      echo "- promote: NOT RUN (no kiln-models in the bundle; build with KILN_BUNDLE_MODELS=1)" >> "$summary"
      failed=1
      continue
    fi
    dir=${KILN_SESSION_DIR:-/tmp/kiln-sessions}
    mkdir -p "$out/promote"
    # shellcheck disable=SC2086
    "$here/kiln" discover promote "$dir" --models-bin "$here/kiln-models" --work-dir "$out/promote/work" \
      --discovered "$out/promote/discovered.json" --log "$out/promote/discovered-log.jsonl" \
      --changelog "$out/promote/CHANGELOG.md" ${KILN_PROMOTE_ARGS:-} > "$out/promote.txt" 2>&1; rc=$?
    echo "- discover promote: $([ $rc = 0 ] && echo DONE || echo "FAIL rc=$rc")" >> "$summary"
    grep -v "^kiln:" "$out/promote.txt" | tail -20 | sed 's/^/    /' >> "$summary"
    [ $rc = 0 ] || failed=1
    ;;
  models)
    # kiln validate on each preset in KILN_VALIDATE (default: both), synthetic
    # weights built in GPU memory; KILN_VALIDATE_ARGS adds flags (e.g. --layers 4).
    if [ ! -x "$here/kiln-models" ]; then
      echo "- models: NOT RUN (no kiln-models in the bundle; build with KILN_BUNDLE_MODELS=1)" >> "$summary"
      failed=1
      continue
    fi
    for preset in ${KILN_VALIDATE:-qwen3-30b-a3b glm-4.7-flash}; do
      start=$(date +%s%N)
      # shellcheck disable=SC2086
      "$here/kiln-models" validate --synthetic "$preset" --out "$out/validate" ${KILN_VALIDATE_ARGS:-} \
        > "$out/validate-$preset.txt" 2>&1; rc=$?
      cat "$out/validate-$preset.txt"
      echo "- validate $preset: $([ $rc = 0 ] && echo DONE || echo "FAIL rc=$rc") ($(( ($(date +%s%N) - start) / 1000000 )) ms)" >> "$summary"
      grep -v "^kiln:" "$out/validate-$preset.txt" | sed 's/^/    /' >> "$summary"
      [ $rc = 0 ] || { failed=1; tail -5 "$out/validate-$preset.txt" | sed 's/^/    /' >> "$summary"; }
    done
    ;;
  models-before)
    # The same validate runs with an earlier build (KILN_MODELS_BEFORE: a kiln-models binary or
    # .gz in the bundle, e.g. kiln-models-e280fa5.gz), into $out/validate-before: "before and
    # after" on one machine. docs/GPU.md says how to build it.
    before="$here/${KILN_MODELS_BEFORE:-}"
    if [ -z "${KILN_MODELS_BEFORE:-}" ] || [ ! -f "$before" ]; then
      echo "- models-before: NOT RUN (set KILN_MODELS_BEFORE to a kiln-models build in the bundle)" >> "$summary"
      failed=1
      continue
    fi
    case "$before" in
      *.gz) gunzip -c "$before" > "${before%.gz}" && chmod +x "${before%.gz}"; before="${before%.gz}" ;;
    esac
    for preset in ${KILN_VALIDATE:-qwen3-30b-a3b glm-4.7-flash}; do
      # shellcheck disable=SC2086
      "$before" validate --synthetic "$preset" --out "$out/validate-before" ${KILN_VALIDATE_BEFORE_ARGS:-${KILN_VALIDATE_ARGS:-}} \
        > "$out/validate-before-$preset.txt" 2>&1; rc=$?
      echo "- validate (before: ${KILN_MODELS_BEFORE}) $preset: $([ $rc = 0 ] && echo DONE || echo "FAIL rc=$rc")" >> "$summary"
      grep -v "^kiln:" "$out/validate-before-$preset.txt" | sed 's/^/    /' >> "$summary"
      [ $rc = 0 ] || failed=1
    done
    ;;
  kernelcheck)
    # kiln-candle's own kernels (decode projections, cache write, fused attention inputs, MLA
    # keys, shared-expert column) on the GPU against their CPU paths.
    if [ ! -x "$here/kiln-models" ]; then
      echo "- kernelcheck: NOT RUN (no kiln-models in the bundle; build with KILN_BUNDLE_MODELS=1)" >> "$summary"
      failed=1
      continue
    fi
    "$here/kiln-models" models check-kernels --json "$out/kernelcheck.json" > "$out/kernelcheck.txt" 2>&1; rc=$?
    cat "$out/kernelcheck.txt"
    echo "- check-kernels: $([ $rc = 0 ] && echo PASS || echo "FAIL rc=$rc")" >> "$summary"
    sed 's/^/    /' "$out/kernelcheck.txt" >> "$summary"
    [ $rc = 0 ] || failed=1
    ;;
  moecheck)
    # One MoE block per model at real dims: each GPU path against its CPU twin.
    if [ ! -x "$here/kiln-models" ]; then
      echo "- moecheck: NOT RUN (no kiln-models in the bundle; build with KILN_BUNDLE_MODELS=1)" >> "$summary"
      failed=1
      continue
    fi
    for preset in ${KILN_MOECHECK:-qwen3-30b-a3b glm-4.7-flash lfm2-8b-a1b}; do
      # shellcheck disable=SC2086
      "$here/kiln-models" models check-moe "$preset" --json "$out/moecheck-$preset.json" ${KILN_MOECHECK_ARGS:-} \
        > "$out/moecheck-$preset.txt" 2>&1; rc=$?
      cat "$out/moecheck-$preset.txt"
      echo "- check-moe $preset: $([ $rc = 0 ] && echo PASS || echo "FAIL rc=$rc")" >> "$summary"
      grep -v "^kiln:" "$out/moecheck-$preset.txt" | sed 's/^/    /' >> "$summary"
      [ $rc = 0 ] || failed=1
    done
    ;;
  ab)
    # Kernel variants (bench/ab/<variant>/<target>.cu) against the catalog, interleaved in one worker.
    for dir in "$here"/bench/ab/${KILN_AB:-*}/; do
      [ -d "$dir" ] || continue
      bash "$here/bench/ab_eval.sh" "$here/kiln" "${dir%/}" | tee -a "$out/ab.txt"
    done
    echo "- kernel A/B: $(grep -c "candidate/catalog" "$out/ab.txt" 2>/dev/null || echo 0) shapes timed (ab.txt)" >> "$summary"
    sed 's/^/    /' "$out/ab.txt" >> "$summary" 2>/dev/null
    ;;
  ncu)
    # Nsight Compute on a KILN_NCU_LAYERS-layer model (default 2): each kernel of one eager
    # decode step, serialised (early launch off, so durations are the kernels' own), through
    # bench/ncu_step.py.
    if ! command -v ncu > /dev/null; then
      echo "- ncu: NOT RUN (no ncu on this machine)" >> "$summary"
      failed=1
      continue
    fi
    for preset in ${KILN_VALIDATE:-qwen3-30b-a3b glm-4.7-flash}; do
      KILN_EARLY_LAUNCH=0 ncu --csv --print-units base --cache-control none --clock-control none \
        --metrics gpu__time_duration.sum "$here/kiln-models" validate --synthetic "$preset" \
        --layers "${KILN_NCU_LAYERS:-2}" --max-tokens 4 --runs 1 --no-baseline --no-noise-floor --eager \
        --out "$out/ncu-validate" 2> "$out/ncu-$preset.err" | gzip > "$out/ncu-$preset.csv.gz"
      python3 "$here/bench/ncu_step.py" "$out/ncu-$preset.csv.gz" > "$out/ncu-step-$preset.txt" 2>&1; rc=$?
      echo "- ncu $preset: $([ $rc = 0 ] && echo DONE || echo "FAIL rc=$rc")" >> "$summary"
      sed 's/^/    /' "$out/ncu-step-$preset.txt" >> "$summary"
      [ $rc = 0 ] || failed=1
    done
    ;;
  hf)
    # transformers on a small synthetic checkpoint: logits against kiln's, and its decode speed.
    for preset in ${KILN_VALIDATE:-qwen3-30b-a3b glm-4.7-flash}; do
      ck=/tmp/kiln-ck-$preset
      "$here/kiln-models" models synth "$preset" --layers "${KILN_HF_LAYERS:-4}" --out "$ck" > /dev/null 2>&1
      "$here/kiln-models" validate "$ck" --dump-logits --runs 1 --max-tokens "${KILN_HF_TOKENS:-32}" \
        --out "$ck/kiln" > "$out/hf-kiln-$preset.txt" 2>&1
      python3 "$here/bench/hf_crosscheck.py" --checkpoint "$ck" --kiln "$ck/kiln" \
        --json "$out/hf-$preset.json" > "$out/hf-$preset.txt" 2>&1; rc=$?
      cat "$out/hf-$preset.txt"
      echo "- transformers cross-check $preset: $([ $rc = 0 ] && echo DONE || echo "FAIL rc=$rc")" >> "$summary"
      sed 's/^/    /' "$out/hf-kiln-$preset.txt" >> "$summary"
      python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print('    hf', d['transformers'], 'steps', d['steps'], 'generate tok/s', round(d['hf_generate_tps_median'],1)); [print('    vs hf bf16:', k, {a: round(b, 5) for a, b in v.items()}) for k, v in d['configs'].items()]; [print('    vs hf f32:', k, {a: round(b, 5) for a, b in v.items()}) for k, v in d.get('against_transformers_f32', {}).items()]" "$out/hf-$preset.json" >> "$summary" 2>&1
      [ $rc = 0 ] || { failed=1; tail -5 "$out/hf-$preset.txt" | sed 's/^/    /' >> "$summary"; }
    done
    ;;
  *)
    echo "unknown suite '$suite' (doctor tests bench torch discover promote sanitizer models models-before kernelcheck moecheck ncu hf ab)" >&2; exit 2 ;;
  esac
done

echo >> "$summary"
echo "overall: $([ $failed = 0 ] && echo PASS || echo FAIL)" >> "$summary"
cat "$summary"
exit $failed
