#!/usr/bin/env bash
# Builds kiln with its candle models (`kiln models`, `kiln validate`): candle's
# CUDA backend, which needs nvcc at build time. Installs the pinned wheels
# first. The target folder persists outside the clone (candle's clean CUDA
# build takes minutes): KILN_MODELS_TARGET, default ~/.cache/kiln/target-models.
#
#   scripts/build-models.sh [cargo args...]   (default: build --release -p kiln-cli --features models-cuda)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup.sh --models >/dev/null
cu13="$root/.cache/cuda-build/nvidia/cu13"
export PATH="$cu13/bin:$PATH"
export CUDA_HOME="$cu13"
export CUDA_COMPUTE_CAP=90
export CARGO_TARGET_DIR="${KILN_MODELS_TARGET:-$HOME/.cache/kiln/target-models}"
if [ $# -eq 0 ]; then
  set -- build --release --locked -p kiln-cli --features models-cuda
fi
echo "build-models: cargo $* (target $CARGO_TARGET_DIR)" >&2
exec cargo "$@"
