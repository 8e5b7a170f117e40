#!/usr/bin/env bash
# Installs what kiln needs beyond a Rust toolchain, pinned, into .cache/:
# NVRTC and the CUDA headers from PyPI wheels, so that kernels compile with
# NVRTC on machines with no GPU and no CUDA toolkit (CI included).
# Idempotent: a second run with the same pins does nothing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/.cache/cuda-wheels"
# Keep these at 13.0: newer NVRTC may emit PTX too new for driver 580.
pins=(
  nvidia-cuda-nvrtc==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
)
stamp="$dest/.kiln-pins"
want=$(printf '%s\n' "${pins[@]}")
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
   && [ -f "$dest/nvidia/cu13/lib/libnvrtc.so.13" ] && [ -f "$dest/nvidia/cu13/include/cuda_bf16.h" ]; then
  echo "setup: pinned CUDA wheels already in $dest"
  exit 0
fi
py=${PYTHON:-python3}
if ! command -v "$py" >/dev/null 2>&1; then
  echo "setup: $py not found; install Python 3 with pip (it fetches the pinned NVRTC wheels)" >&2
  exit 1
fi
echo "setup: installing ${pins[*]} into $dest"
rm -rf "$dest"
mkdir -p "$dest"
"$py" -m pip install --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --target "$dest" "${pins[@]}"
for f in nvidia/cu13/lib/libnvrtc.so.13 nvidia/cu13/include/cuda_bf16.h; do
  [ -f "$dest/$f" ] || { echo "setup: $dest/$f missing after install" >&2; exit 1; }
done
echo "$want" > "$stamp"
echo "setup: done"
