#!/usr/bin/env bash
# Builds what the GPU suite needs and puts it in gpu-bundle/ (git-ignored):
# the release `kiln` binary, every test executable of the workspace, the
# Python benchmark script, and run.sh, which runs them all on a GPU machine
# and writes a summary to $OUT. The GPU machine needs no Rust and no network.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bundle="$root/gpu-bundle"
rm -rf "$bundle"
mkdir -p "$bundle/tests"

cargo build --release --locked -p kiln-cli
cp target/release/kiln "$bundle/kiln"

# Test executables with GPU tests (ignored in scripts/test.sh): build them
# and copy each under "<crate>-<target>".
# KILN_BUNDLE_PACKAGES="-p kiln-cuda" narrows the set (default: the workspace).
# shellcheck disable=SC2086
cargo test --release ${KILN_BUNDLE_PACKAGES:---workspace} --locked --no-run --message-format=json 2>/dev/null \
  | python3 -c '
import json, shutil, subprocess, sys
dest = sys.argv[1]
for line in sys.stdin:
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
        continue
    if not msg.get("profile", {}).get("test"):
        continue
    crate = msg["manifest_path"].split("/")[-2]
    name = crate + "-" + msg["target"]["name"]
    # Only executables with GPU tests travel (the rest ran in scripts/test.sh):
    # the device call carries at most 64 MiB.
    listed = subprocess.run([msg["executable"], "--list", "--ignored"], capture_output=True, text=True)
    if not any(line.endswith(": test") for line in listed.stdout.splitlines()):
        continue
    shutil.copy(msg["executable"], f"{dest}/{name}")
    print("bundled test", name)
' "$bundle/tests"

# KILN_BUNDLE_MODELS_BEFORE=COMMIT adds kiln-models-COMMIT.gz, the models
# binary of an earlier commit (the `models-before` suite), built from a
# temporary worktree into its own target folder (…-before) before the current one.
if [ -n "${KILN_BUNDLE_MODELS_BEFORE:-}" ]; then
  scripts/setup.sh --models >/dev/null
  old=$(mktemp -d)
  git worktree add --detach "$old" "$KILN_BUNDLE_MODELS_BEFORE" >/dev/null
  # Its own target folder: cargo names a workspace crate's artifacts by its path
  # relative to the workspace, so the worktree's crates and the current ones
  # would share file names in one folder, and the current build could pick up
  # the older crate where the current sources look older than its artifact.
  target="${KILN_MODELS_TARGET:-$HOME/.cache/kiln/target-models}-before"
  (cd "$old" && PATH="$root/.cache/cuda-build/nvidia/cu13/bin:$PATH" CUDA_HOME="$root/.cache/cuda-build/nvidia/cu13" \
     CUDA_COMPUTE_CAP=90 KILN_CUDA_LINK_DIR="$root/.cache/cuda-build/link" CARGO_TARGET_DIR="$target" \
     cargo build --release --locked -p kiln-cli --features models-cuda)
  gzip -c "$target/release/kiln" > "$bundle/kiln-models-$KILN_BUNDLE_MODELS_BEFORE.gz"
  git worktree remove --force "$old"
  KILN_BUNDLE_MODELS=1
fi

# KILN_BUNDLE_MODELS=1 adds kiln-models: kiln built with candle's CUDA
# backend (`kiln validate`), from scripts/build-models.sh's target folder.
if [ "${KILN_BUNDLE_MODELS:-0}" = 1 ]; then
  scripts/build-models.sh
  # candle embeds its PTX: the binary is ~60 MB, so it travels gzipped (run.sh unpacks it).
  gzip -c "${KILN_MODELS_TARGET:-$HOME/.cache/kiln/target-models}/release/kiln" > "$bundle/kiln-models.gz"
fi

cp scripts/gpu-run.sh "$bundle/run.sh"
cp -r crates/kiln-cli/tests/red_team "$bundle/red_team"
[ -d bench ] && cp -r bench "$bundle/bench"
git rev-parse --short HEAD > "$bundle/COMMIT" 2>/dev/null || echo unknown > "$bundle/COMMIT"
du -sh "$bundle"
