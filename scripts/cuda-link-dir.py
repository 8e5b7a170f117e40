#!/usr/bin/env python3
"""Makes the folder candle's CUDA build links against, with no CUDA toolkit.

candle links the CUDA libraries (cudarc in dynamic-linking mode) and asks
for -lcuda -lnvrtc -lcurand -lcublas -lcublasLt -lcudart. This machine has
no driver and no cuBLAS, and the GPU machine has no libcudart.so, so:

- cudart is linked statically: libcudart.so here is a linker script that
  names the pinned wheel's libcudart_static.a;
- nvrtc is the pinned wheel's real library;
- cuda, cublas, cublasLt and curand are stubs: shared libraries with the real
  SONAME that export every function cudarc's bindings can call, with no
  code behind them. The loader on the GPU machine then loads the real
  libraries by SONAME. The function names are read from the cudarc sources
  that Cargo.lock pins, so the stubs follow the bindings exactly.

usage: cuda-link-dir.py CUDA_ROOT OUT_DIR   (CUDA_ROOT = wheels' nvidia/cu13)
"""

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

# (stub file, SONAME the real library has, cudarc sys module it backs)
STUBS = [
    ("libcuda.so", "libcuda.so.1", "driver"),
    ("libcublas.so", "libcublas.so.13", "cublas"),
    ("libcublasLt.so", "libcublasLt.so.13", "cublaslt"),
    ("libcurand.so", "libcurand.so.10", "curand"),
]
SYMBOL = re.compile(r'load::<_F>\("(\w+)"\)')


def cudarc_source() -> Path:
    meta = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--locked"],
        check=True,
        capture_output=True,
        text=True,
    )
    for package in json.loads(meta.stdout)["packages"]:
        if package["name"] == "cudarc":
            return Path(package["manifest_path"]).parent / "src"
    sys.exit("cuda-link-dir: cudarc is not in `cargo metadata`; run from the kiln workspace")


def build_stub(out: Path, file: str, soname: str, module: Path) -> int:
    names = sorted(set(SYMBOL.findall(module.read_text())))
    if not names:
        sys.exit(f"cuda-link-dir: no functions found in {module}; the cudarc layout changed")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "stub.c"
        # Each symbol only has to exist for the link; it is never called here.
        src.write_text("".join(f"void {n}(void) {{}}\n" for n in names))
        subprocess.run(
            ["cc", "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o", str(out / file), str(src)],
            check=True,
        )
    return len(names)


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    cuda_root, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    lib = cuda_root / "lib"
    for need in ("libcudart_static.a", "libnvrtc.so.13"):
        if not (lib / need).is_file():
            sys.exit(f"cuda-link-dir: {lib / need} missing; run scripts/setup.sh --models")

    sources = cudarc_source()
    for file, soname, module in STUBS:
        count = build_stub(out, file, soname, sources / module / "sys" / "mod.rs")
        print(f"cuda-link-dir: {file} (SONAME {soname}), {count} functions")

    (out / "libcudart.so").write_text(
        f"/* static cudart from the pinned wheel */\nGROUP ( {lib / 'libcudart_static.a'} -lrt -lpthread -ldl )\n"
    )
    nvrtc = out / "libnvrtc.so"
    if nvrtc.is_symlink() or nvrtc.exists():
        nvrtc.unlink()
    os.symlink(lib / "libnvrtc.so.13", nvrtc)
    print(f"cuda-link-dir: {out} ready")


if __name__ == "__main__":
    main()
