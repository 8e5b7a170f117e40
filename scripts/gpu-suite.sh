#!/usr/bin/env bash
# One command for the GPU suite on a machine with an NVIDIA GPU and Rust:
# builds the bundle, then runs it. Results land in ./gpu-results (or $OUT).
# Suites as arguments: doctor tests bench sanitizer (default: doctor tests).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/gpu-bundle.sh"
exec bash "$root/gpu-bundle/run.sh" "$@"
