#!/usr/bin/env python3
"""Writes kernel files as one kernel pack for `kiln validate --pack`: each entry
without defines, so it stands in for every configuration of its entry point.
With older versions of catalog kernels this runs the older catalog against the
current one in the same process (the bar for a catalog change is a model that
decodes faster with the same tokens, compared within one run):

  mkdir -p /tmp/old && for k in rope decode_attention; do
    git show COMMIT:crates/kiln-kernels/kernels/$k.cu > /tmp/old/$k.cu; done
  python3 bench/make_pack.py /tmp/old/*.cu > old-pack.json
  kiln-models validate --synthetic qwen3-30b-a3b --pack old-pack.json
"""
import json
import pathlib
import re
import sys

KERNEL = 'extern "C" __global__ void'
ATTRIBUTES = {"__launch_bounds__", "__cluster_dims__"}


def entry_point(source):
    """The name of the first extern "C" kernel, past attributes such as __launch_bounds__(...)."""
    at = source.find(KERNEL)
    if at < 0:
        return None
    for m in re.finditer(r"(\w+)\s*\(", source[at + len(KERNEL):]):
        if m.group(1) not in ATTRIBUTES:
            return m.group(1)
    return None


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    pack = []
    for name in sys.argv[1:]:
        path = pathlib.Path(name)
        source = path.read_text()
        entry = entry_point(source)
        if not entry:
            sys.exit(f'{path}: no extern "C" __global__ entry point found')
        pack.append({"target": f"{path.stem} (from {path})", "entry_point": entry, "source": source})
    json.dump(pack, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
