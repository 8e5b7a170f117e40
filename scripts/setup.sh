#!/usr/bin/env bash
# Installs what kiln needs beyond a Rust toolchain, pinned, into .cache/.
#
#   scripts/setup.sh           NVRTC and the CUDA headers (PyPI wheels), so
#                              kernels compile with NVRTC on machines with no
#                              GPU and no CUDA toolkit (CI included).
#   scripts/setup.sh --models  also what candle's CUDA build needs (kiln-candle
#                              with `--features cuda`): nvcc, NVVM and the CRT
#                              headers from pinned wheels, plus the link folder
#                              that scripts/cuda-link-dir.py makes (static
#                              cudart, link stubs for the driver and cuBLAS).
#
# Idempotent: a second run with the same pins does nothing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}

# Keep these at 13.0: newer NVRTC may emit PTX too new for driver 580.
base_pins=(
  nvidia-cuda-nvrtc==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
)
build_pins=(
  "${base_pins[@]}"
  nvidia-cuda-nvcc==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-crt==13.0.88
)

# install_pins DEST PIN... : installs the wheels into DEST unless its stamp matches.
install_pins() {
  local dest=$1
  shift
  local stamp="$dest/.kiln-pins"
  local want
  want=$(printf '%s\n' "$@")
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "setup: pinned CUDA wheels already in $dest"
    return 0
  fi
  if ! command -v "$py" >/dev/null 2>&1; then
    echo "setup: $py not found; install Python 3 with pip (it fetches the pinned CUDA wheels)" >&2
    exit 1
  fi
  echo "setup: installing $* into $dest"
  rm -rf "$dest"
  mkdir -p "$dest"
  "$py" -m pip install --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --target "$dest" "$@"
  echo "$want" > "$stamp"
}

require() {
  for f in "$@"; do
    [ -e "$f" ] || { echo "setup: $f missing after install" >&2; exit 1; }
  done
}

dest="$root/.cache/cuda-wheels"
install_pins "$dest" "${base_pins[@]}"
require "$dest/nvidia/cu13/lib/libnvrtc.so.13" "$dest/nvidia/cu13/include/cuda_bf16.h"

if [ "${1:-}" = "--models" ]; then
  build="$root/.cache/cuda-build"
  install_pins "$build" "${build_pins[@]}"
  require "$build/nvidia/cu13/bin/nvcc" "$build/nvidia/cu13/lib/libcudart_static.a"
  "$py" "$root/scripts/cuda-link-dir.py" "$build/nvidia/cu13" "$build/link"
fi
echo "setup: done"
