#!/usr/bin/env python3
"""A deliberately wrong kernel pack, to show that `kiln validate --pack` fails.

Usage: python3 bench/wrong_pack.py PACK.json TARGET [FACTOR] > wrong.json

Takes TARGET's entry of a pack (e.g. the discovered set) and scales its
attention scores by FACTOR (default 1.05: softmax at another temperature,
every output a little off, nothing crashes), then writes a pack of that one
entry. Only the
offline `decode_attention` family's score line is known; anything else is
an error, never an unchanged pack.
"""
import json
import sys

SCORE = "sc[p] = d[u] * (float)KILN_SCALE;"


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    path, target = sys.argv[1], sys.argv[2]
    factor = float(sys.argv[3]) if len(sys.argv) == 4 else 1.05
    wrong = f"sc[p] = d[u] * (float)KILN_SCALE * {factor!r}f;  // deliberately wrong"
    entries = [e for e in json.load(open(path)) if e.get("target") == target]
    if len(entries) != 1:
        sys.exit(f"{path}: {len(entries)} entries for {target}, want 1")
    e = entries[0]
    if e["source"].count(SCORE) != 1:
        sys.exit(f"{target}: the score line `{SCORE}` is not in its source once; nothing made wrong")
    e["source"] = e["source"].replace(SCORE, wrong)
    json.dump([e], sys.stdout, indent=1)


if __name__ == "__main__":
    main()
