#!/usr/bin/env python3
"""Checks that the modules of imgc's library form no import cycle.

A module is a top-level file or folder of src/ (`plan`, `registry`, ...).
Module A depends on B when code of A (outside comments and `#[cfg(test)]`
blocks at the end of a file) names `crate::B`, directly or inside a
`use crate::{...}` group. Prints the graph; exits 1 if it has a cycle,
naming it. Usage: scripts/check-imports.py [SRC_DIR]
"""
import os
import re
import sys


def top_names_in_group(text, start):
    """The first identifier of each top-level item of the `{...}` at start."""
    depth, item, names = 0, "", []
    for ch in text[start:]:
        if ch == "{":
            depth += 1
            if depth == 1:
                continue
        elif ch == "}":
            depth -= 1
            if depth == 0:
                break
        if depth == 1 and ch == ",":
            names.append(item)
            item = ""
        elif depth >= 1:
            item += ch
    names.append(item)
    out = []
    for n in names:
        m = re.match(r"\s*(\w+)", n)
        if m and m.group(1) != "self":
            out.append(m.group(1))
    return out


def deps_of(text):
    text = text.split("#[cfg(test)]")[0]
    text = "\n".join(l for l in text.splitlines() if not l.strip().startswith("//"))
    found = set(re.findall(r"crate::(\w+)", text))
    for m in re.finditer(r"crate::\{", text):
        found.update(top_names_in_group(text, m.end() - 1))
    return found


def graph(src):
    mods = {}
    for dirpath, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            top = os.path.relpath(path, src).split(os.sep)[0].removesuffix(".rs")
            if top in ("main", "lib"):
                continue
            with open(path, encoding="utf-8") as fh:
                deps = deps_of(fh.read())
            mods.setdefault(top, set()).update(d for d in deps if d != top)
    for m in mods:
        mods[m] &= set(mods)
    return mods


def find_cycle(mods):
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(mods[m]):
            if state.get(d) == "open":
                return stack[stack.index(d):] + [d]
            if d not in state:
                c = visit(d)
                if c:
                    return c
        state[m] = "done"
        stack.pop()
        return None

    for m in sorted(mods):
        if m not in state:
            c = visit(m)
            if c:
                return c
    return None


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "src")
    mods = graph(src)
    for m in sorted(mods):
        print(f"{m:10} -> {', '.join(sorted(mods[m])) or '(nothing)'}")
    cycle = find_cycle(mods)
    if cycle:
        print("import cycle: " + " -> ".join(cycle), file=sys.stderr)
        return 1
    print("no import cycle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
