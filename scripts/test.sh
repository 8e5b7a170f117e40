#!/usr/bin/env bash
# kiln's test command (the README's second command; CI runs exactly this).
# Installs the pinned NVRTC wheels, then: formatting, lints, and every test
# that needs no GPU — NVRTC compilation of every kernel included — and a
# Slurm array job on a one-node cluster it starts. GPU tests
# are listed as ignored here; scripts/gpu-suite.sh runs them on a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test (no GPU: GPU tests are reported as ignored and run by scripts/gpu-suite.sh)"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
# NVRTC must have compiled real kernels: refuse a run where those tests did not run.
for t in probe_kernels_compile_to_sm90_cubin_and_ptx; do
  if ! grep -q "^test $t ... ok" "$log"; then
    echo "error: the NVRTC compile test '$t' did not run and pass; kernels were not compiled" >&2
    exit 1
  fi
done
# A real one-node Slurm (installed and started by the script, stopped after):
# a `kiln discover slurm` array of four shards must equal one process.
echo "== Slurm: a 4-task autorun array on a one-node cluster"
scripts/slurm-test.sh
# kiln-candle's CUDA build (candle's own kernels need nvcc, from pinned wheels):
# lint and build it here, where no GPU runs it. Its target folder persists
# outside the clone (KILN_MODELS_TARGET), so later runs are incremental.
echo "== kiln-candle with candle's CUDA backend: clippy -D warnings and a release build (not run: no GPU)"
scripts/build-models.sh clippy --release --locked -p kiln-candle -p kiln-cli \
  --features kiln-cli/models-cuda --all-targets -- -D warnings
scripts/build-models.sh
ignored=$(grep -c "\.\.\. ignored, needs a CUDA GPU" "$log" || true)
echo "NOTE: $ignored GPU tests were not run (no GPU in this test command); run scripts/gpu-suite.sh on an NVIDIA machine."
