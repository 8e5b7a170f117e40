#!/usr/bin/env bash
# kiln's main job: kernel discovery on the local NVIDIA GPU with the offline
# proposer. Installs the pinned NVRTC and header wheels (scripts/setup.sh: a
# machine with a driver but no CUDA toolkit needs them), builds the release
# binary, checks the machine, then searches every target. Arguments go to
# `kiln discover autorun` (see its --help).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup.sh
cargo build --release --locked -p kiln-cli
./target/release/kiln doctor
exec ./target/release/kiln discover autorun "$@"
