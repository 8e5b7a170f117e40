#!/usr/bin/env python3
"""Writes the kernels of this folder that replaced catalog kernels (*_v1.cu) as
one kernel pack for `kiln validate --pack`: each entry without defines, so it
stands in for every configuration of its entry point and the older catalog runs
against the current one in the same process.

Usage: python3 bench/variants/make_pack.py [NAME...] > v1-pack.json
(NAME: only these kernels, e.g. decode_attention_v1; default: every *_v1.cu)
"""
import json
import pathlib
import re
import sys

ENTRY = re.compile(r'extern "C" __global__ void (?:__launch_bounds__\([^)]*\)\s*)?(\w+)\(')


def main():
    here = pathlib.Path(__file__).resolve().parent
    pack = []
    only = set(sys.argv[1:])
    for path in sorted(here.glob("*_v1.cu")):
        if only and path.stem not in only:
            continue
        source = path.read_text()
        m = ENTRY.search(source)
        if not m:
            sys.exit(f"{path.name}: no extern \"C\" __global__ entry point found")
        pack.append({"target": path.stem, "entry_point": m.group(1), "source": source})
    if not pack:
        sys.exit(f"no *_v1.cu kernels in {here}")
    json.dump(pack, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
