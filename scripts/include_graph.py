#!/usr/bin/env python3
"""The include graph between the library's rooms (src/ folders), floor by floor.

Every file under src/ belongs to its folder; a public header include/dsv4/X.h
belongs to the room that implements it (ROOM_OF_HEADER). The rooms are stacked
in FLOORS, lowest first: a room may include its own floor and the floors below.
Prints the room -> room edges (with how many includes make each), every include
that runs up a floor, and any circle. Exits 1 on a circle, on more up-floor
includes than ALLOWED_UP, or on a source file outside the known rooms.
Also checks that the targets that must use the public API only (the Python
bindings, the reference, the CLI) include no src/ header.

    scripts/include_graph.py [--dot]     (--dot: the room graph for Graphviz)
"""
import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Lowest first. Each room may include headers of its floor and the floors below.
FLOORS = ["common", "config", "ops", "io", "state", "pipeline", "train", "layer", "conformance", "parallel"]

# The room that implements each public header (where its declarations are defined).
ROOM_OF_HEADER = {
    "error.h": "common", "tensor.h": "common", "dtype.h": "common", "atomic_file.h": "common",
    "version.h": "common",  # generated from cmake/version.h.in
    "config.h": "config",
    "profile.h": "ops",
    "safetensors.h": "io", "weights.h": "io", "checkpoint.h": "io", "random.h": "io",
    "state.h": "state",
    "intermediates.h": "pipeline",
    "train.h": "train",
    "layer.h": "layer", "model.h": "layer",
    "conformance.h": "conformance",
    "context_parallel.h": "parallel",  # libdsv4_mpi (built when MPI is found)
}

# Up-floor includes that are allowed, as (file, included header): none.
ALLOWED_UP = set()

# Targets that use the public API only (no src/ header). The fuzz targets are
# white-box, like the unit tests: they compile the library's sources they fuzz.
PUBLIC_ONLY = ["python/src", "python/tests", "reference", "tools", "examples"]

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def room_of(path):
    rel = path.relative_to(ROOT)
    if rel.parts[0] == "include":
        return ROOM_OF_HEADER.get(rel.name)
    if rel.parts[0] == "src":
        return rel.parts[1]
    return None


def target_room(inc):
    if inc.startswith("dsv4/"):
        return ROOM_OF_HEADER.get(inc[len("dsv4/"):])
    head = inc.split("/")[0]
    return head if head in FLOORS else None


def main():
    floor = {r: i for i, r in enumerate(FLOORS)}
    files = sorted(p for d in ("src", "include/dsv4") for p in (ROOT / d).rglob("*") if p.suffix in (".h", ".cpp"))
    edges = defaultdict(int)
    up, problems = [], []
    for f in files:
        src_room = room_of(f)
        rel = str(f.relative_to(ROOT))
        if src_room not in floor:
            problems.append(f"{rel}: not in a known room (add it to FLOORS / ROOM_OF_HEADER)")
            continue
        for inc in INCLUDE.findall(f.read_text()):
            dst = target_room(inc)
            if dst is None:
                if not (f.parent / inc).exists():
                    problems.append(f"{rel}: includes {inc}, which is in no known room")
                continue
            if dst == src_room:
                continue
            edges[(src_room, dst)] += 1
            if floor[dst] > floor[src_room]:
                up.append((rel, inc, src_room, dst))

    for d in PUBLIC_ONLY:
        for f in sorted((ROOT / d).rglob("*")):
            if f.suffix not in (".h", ".cpp"):
                continue
            for inc in INCLUDE.findall(f.read_text()):
                if inc.split("/")[0] in FLOORS and not (f.parent / inc).exists():
                    problems.append(f"{f.relative_to(ROOT)}: includes the internal header {inc} (public API only)")

    if "--dot" in sys.argv:
        print("digraph rooms {\n  rankdir=BT;")
        for (a, b), n in sorted(edges.items()):
            print(f'  "{a}" -> "{b}" [label={n}{", color=red" if floor[b] > floor[a] else ""}];')
        print("}")
        return 0

    # Circles: strongly connected components of the room graph with more than one room.
    graph = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp, key=floor.get))

    for r in FLOORS:
        if r not in index:
            visit(r)

    print("floors (lowest first): " + " < ".join(FLOORS))
    print("room -> room (includes):")
    for (a, b), n in sorted(edges.items(), key=lambda e: (floor[e[0][0]], floor[e[0][1]])):
        print(f"  {a:12s} -> {b:12s} {n:3d}{'   UP' if floor[b] > floor[a] else ''}")
    print(f"includes running up a floor: {len(up)}")
    for rel, inc, a, b in up:
        print(f"  {rel}: {inc} ({a} -> {b}){'  [allowed]' if (rel, inc) in ALLOWED_UP else ''}")
    print(f"circles: {len(sccs)}" + "".join(f"\n  {' <-> '.join(c)}" for c in sccs))
    for p in problems:
        print("problem: " + p)
    bad_up = [u for u in up if (u[0], u[1]) not in ALLOWED_UP]
    return 1 if sccs or bad_up or problems else 0


if __name__ == "__main__":
    sys.exit(main())
