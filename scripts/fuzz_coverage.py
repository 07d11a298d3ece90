#!/usr/bin/env python3
"""Branch coverage of load_state from `llvm-cov export` JSON on stdin (scripts/fuzz.sh, FUZZ_COVERAGE=1).

A branch edge is one outcome (true or false) of one condition in clang's source-based
coverage; an edge is reached if that outcome happened at least once. Prints load_state's
own edges, then those of the functions of src/state/ that loading runs: load_state, its
readers (Reader, read_compressor, expect), the checksum and the value checks (check_*).
"""
import json
import re
import subprocess
import sys


def demangle(names):
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout
    return out.splitlines() if out else names


LOADING = re.compile(r"load_state|read_compressor|Reader::|expect|check_|Fnv1a")
data = json.load(sys.stdin)["data"][0]
funcs = [f for f in data["functions"] if any("/src/state/" in p for p in f["filenames"])]
names = demangle([f["name"].split(":")[-1] for f in funcs])
rows, total = [], [0, 0]
for f, name in zip(funcs, names):
    if not LOADING.search(name):
        continue
    edges = 2 * len(f["branches"])
    hit = sum((b[4] > 0) + (b[5] > 0) for b in f["branches"])
    if edges == 0:
        continue
    rows.append((name.replace("(anonymous namespace)::", "").split("(")[0], hit, edges))
    total[0] += hit
    total[1] += edges
for name, hit, edges in sorted(rows, key=lambda r: -r[2]):
    print(f"{hit:4d} of {edges:4d} branch edges  {name}")
print(f"{total[0]:4d} of {total[1]:4d} branch edges  loading, all functions above")
