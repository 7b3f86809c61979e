#!/usr/bin/env python3
"""The house drawn from the imports: for every crate in the workspace and every module that
has submodules, the graph of which child module uses which sibling or the parent's own
items (through `crate::`, `super::` or a bare child name), and the circles in it. A parent
declaring (`mod`) or re-exporting (`pub use`) a child is not a use. Exit status 1 if any circle exists.

Usage: python3 .ci/import_graph.py [--edges]"""
import os, re, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRATES = ["protocol", "net", "security", "storage", "replication", "controller-api", "controller",
          "server", "client", "cli", "bench"]

def module_files(src):
    """map module path tuple -> file path"""
    mods = {}
    for dirpath, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            full = os.path.join(dirpath, f)
            rel = os.path.relpath(full, src)[:-3].split(os.sep)
            if rel == ["lib"] or (rel == ["main"] and not os.path.exists(os.path.join(src, "lib.rs"))):
                rel = []
            elif rel == ["main"]:
                continue  # a binary's main.rs beside lib.rs only calls into the library
            elif rel[-1] == "mod":
                rel = rel[:-1]
            mods[tuple(rel)] = full
    return mods

def strip(text):
    """`text` without comments, and with every string and char literal emptied."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and not (i and (text[i - 1].isalnum() or text[i - 1] == "_")):
            hashes = re.match(r'r(#*)"', text[i:]).group(1)
            end = text.find('"' + hashes, i + len(hashes) + 2)
            out.append('""')
            i = n if end < 0 else end + 1 + len(hashes)
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            out.append('""')
            i += 1
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i:i + 4]) or re.match(r"'\\[xu]", text[i:i + 3]):
            j = text.find("'", i + 2)
            out.append("' '")
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)

PATH = re.compile(r"\b((?:crate|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)+|[a-z_][a-z0-9_]*::[A-Za-z_][A-Za-z0-9_:]*)")
GLOB = re.compile(r"\buse\s+((?:crate|super|self)(?:::\w+)*)::\*\s*;")
USE_GROUP = re.compile(r"\buse\s+((?:crate|super|self)(?:::\w+)*)::\{([^;]*)\}", re.S)

def refs(mod, text, mods):
    """absolute module paths referenced from module `mod`"""
    out = set()
    cands = [m.group(1) for m in PATH.finditer(text)]
    cands += [m.group(1) + "::*" for m in GLOB.finditer(text)]
    for m in USE_GROUP.finditer(text):
        base = m.group(1)
        for item in re.split(r"[,\s]+", re.sub(r"\{[^}]*\}", "", m.group(2))):
            item = item.strip()
            if item:
                cands.append(base + "::" + item.split(" as ")[0])
    for c in cands:
        parts = c.split("::")
        if parts[0] == "crate":
            absp = [p for p in parts[1:] if p != "*"]
        elif parts[0] in ("super", "self"):
            parts = [p for p in parts if p != "*"]
            base = list(mod)
            i = 0
            while i < len(parts) and parts[i] in ("super", "self"):
                if parts[i] == "super":
                    base = base[:-1]
                i += 1
            absp = base + parts[i:]
        elif tuple(list(mod) + [parts[0]]) in mods:
            absp = list(mod) + parts
        else:
            continue
        # longest module prefix, following `pub use` re-exports
        for _ in range(8):
            for k in range(len(absp), -1, -1):
                if tuple(absp[:k]) in mods:
                    break
            target = tuple(absp[:k])
            nxt = absp[k] if k < len(absp) else None
            via = REEXPORTS.get(target, {}).get(nxt)
            if via is None or via == target:
                out.add(target)
                break
            absp = list(via) + absp[k + 1:]
    return out

REEXPORTS = {}

def collect_reexports(mods):
    """module -> {name: module it is re-exported from}"""
    REEXPORTS.clear()
    for mod, path in mods.items():
        text = strip(open(path).read())
        table = {}
        for m in re.finditer(r"\bpub(?:\([^)]*\))?\s+use\s+([^;]+);", text):
            body = m.group(1).strip()
            g = re.match(r"([\w:]+?)::\{(.*)\}$", body, re.S)
            items = []
            if g:
                items = [(g.group(1), i.strip()) for i in g.group(2).split(",") if i.strip()]
            else:
                head, _, last = body.rpartition("::")
                items = [(head, last)]
            for base, item in items:
                name = item.split(" as ")[-1].strip()
                item = item.split(" as ")[0].strip()
                parts = base.split("::")
                if parts[0] == "crate":
                    absp = parts[1:]
                elif parts[0] in ("super", "self"):
                    absp = list(mod)
                    for x in parts:
                        if x == "super":
                            absp = absp[:-1]
                        elif x != "self":
                            absp.append(x)
                elif tuple(list(mod) + [parts[0]]) in mods:
                    absp = list(mod) + parts
                else:
                    continue
                for k in range(len(absp), -1, -1):
                    if tuple(absp[:k]) in mods:
                        table[name] = tuple(absp[:k])
                        break
        REEXPORTS[mod] = table

def parents_of(mods):
    return {m[:-1] for m in mods if m}

def drop_test_modules(text):
    """`text` without its inline `#[cfg(test)] mod NAME { ... }` blocks."""
    while True:
        m = re.search(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text)
        if not m:
            return text
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        text = text[:m.start()] + text[i:]

def sccs(nodes, edges):
    index, low, stack, on, res, n = {}, {}, [], set(), [], [0]
    def visit(v):
        index[v] = low[v] = n[0]; n[0] += 1; stack.append(v); on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v:
                    break
            res.append(comp)
    for v in nodes:
        if v not in index:
            visit(v)
    return res

def main():
    show = "--edges" in sys.argv
    circles = 0
    sys.setrecursionlimit(10000)
    for crate in CRATES:
        src = os.path.join(ROOT, crate, "src")
        if not os.path.isdir(src):
            continue
        mods = module_files(src)
        collect_reexports(mods)
        uses = {}
        for mod, path in mods.items():
            text = strip(open(path).read())
            if any(len(m) > len(mod) and m[:len(mod)] == mod for m in mods):
                # a parent re-exporting its children is not a use of them
                text = re.sub(r"\bpub(?:\([^)]*\))?\s+use\s+[^;]+;", "", text)
            text = drop_test_modules(text)
            if mod not in parents_of(mods):
                pass
            uses[mod] = refs(mod, text, mods)
        test_mods = {m for m, p in mods.items() if re.search(r"(^|_)tests?$|proptests$", m[-1] if m else "")}
        parents = {m[:-1] for m in mods if m}
        for parent in sorted(parents):
            children = sorted({m[len(parent)] for m in mods if len(m) > len(parent) and m[:len(parent)] == parent})
            def node(m):
                if m[:len(parent)] != parent:
                    return None
                return m[len(parent)] if len(m) > len(parent) else "<self>"
            edges = {}
            for m, targets in uses.items():
                if m in test_mods or any(m[:k] in test_mods for k in range(len(m))):
                    continue
                a = node(m)
                if a is None:
                    continue
                for t in targets:
                    b = node(t)
                    if b is None or b == a:
                        continue
                    if tuple(list(parent) + [b]) in test_mods:
                        continue
                    edges.setdefault(a, set()).add(b)
            name = crate + ("::" + "::".join(parent) if parent else "")
            if show:
                for a in sorted(edges):
                    print(f"{name}: {a} -> {', '.join(sorted(edges[a]))}")
            for comp in sccs(["<self>"] + children, edges):
                if len(comp) > 1:
                    circles += 1
                    print(f"CIRCLE in {name}: {' <-> '.join(sorted(comp))}")
    if circles:
        print(f"{circles} circle(s)")
        return 1
    print("no import circles")
    return 0

sys.exit(main())
