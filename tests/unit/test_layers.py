"""Imports only go downward, and no module imports itself back round a cycle.

Every module under ahvlite/ is read with ``ast``: imports at the top, inside functions,
under ``if TYPE_CHECKING:``, and relative ones. Layers, highest first (docs/architecture.md):

    cli > lab > controller > cluster > sched > virt, net, remote, storage > spec
        > errors, kv, pki, envfile, clock

A module may import from its own package and from any lower layer. Packages of one
layer are siblings and must not import each other (the drivers each wrap one external
system; they meet only in the layers above), except ``errors``, the one exception
hierarchy every module may raise.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "ahvlite"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli",),
    ("lab",),
    ("controller",),
    ("cluster",),
    ("sched",),
    ("virt", "net", "remote", "storage"),
    ("spec",),
    ("errors", "kv", "pki", "envfile", "clock"),
)
SHARED = {"errors"}  # importable by its siblings too

# Sibling imports that exist today and are to be removed (module -> imported module).
# Empty this as they go; an entry that no longer matches an import fails the test.
ALLOWED_SIBLING: set[tuple[str, str]] = set()


def rank_of(package: str) -> int | None:
    """Higher is further up; None for the package root itself (``ahvlite``)."""
    for i, layer in enumerate(LAYERS):
        if package in layer:
            return len(LAYERS) - i
    return None


def modules(root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for p in sorted(root.rglob("*.py")):
        parts = list(p.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The module ``name`` names, or (an attribute of a module) the module holding it."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports(module: str, path: Path, known: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """(imported ahvlite module, line) for every import in ``path``."""
    is_pkg = path.name == "__init__.py"
    here = module if is_pkg else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "ahvlite" or a.name.startswith("ahvlite."):
                    target = _resolve(a.name, known)
                    if target:
                        yield target, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[:len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            if prefix != "ahvlite" and not prefix.startswith("ahvlite."):
                continue
            for a in node.names:
                # `from pkg import mod` imports the module; `from mod import name` the module.
                target = _resolve(f"{prefix}.{a.name}", known)
                if target:
                    yield target, node.lineno


def graph(root: Path = ROOT) -> dict[str, dict[str, int]]:
    """module -> {imported module: first line}."""
    known = modules(root)
    out: dict[str, dict[str, int]] = {}
    for mod, path in known.items():
        edges: dict[str, int] = {}
        for target, line in imports(mod, path, known):
            if target != mod:
                edges.setdefault(target, line)
        out[mod] = edges
    return out


def package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_violations(g: dict[str, dict[str, int]]) -> tuple[list[str], set[tuple[str, str]]]:
    """Upward and sibling imports (as messages), and the allowed sibling pairs seen."""
    bad, used = [], set()
    for mod, edges in sorted(g.items()):
        src = package(mod)
        for target, line in sorted(edges.items()):
            dst = package(target)
            if dst == src or dst == "":
                continue
            r_src, r_dst = rank_of(src), rank_of(dst)
            if r_src is None or r_dst is None:
                bad.append(f"{mod}:{line} imports {target}: package not in LAYERS")
            elif r_dst > r_src:
                bad.append(f"{mod}:{line} imports {target}: {dst} is above {src}")
            elif r_dst == r_src and dst not in SHARED:
                if (mod, target) in ALLOWED_SIBLING:
                    used.add((mod, target))
                else:
                    bad.append(f"{mod}:{line} imports {target}: {dst} is a sibling of {src}")
    return bad, used


def cycles(g: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan);
    :func:`components` names every module of each."""
    return [_one_cycle(g, set(c)) for c in components(g)]


def components(g: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[list[str]] = []

    def visit(v: str) -> None:  # recursion depth is bounded by the module count
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, {}):
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
                comps.append(comp)

    for v in sorted(g):
        if v not in index:
            visit(v)
    return [sorted(c) for c in comps]


def _one_cycle(g: dict[str, dict[str, int]], comp: set[str]) -> list[str]:
    """A shortest path from the component's first module back to itself."""
    start = min(comp)
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(g[v]):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w in comp and w not in prev and w != start:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return sorted(comp)  # not reached: a component of two or more has a cycle


def describe(g: dict[str, dict[str, int]], cycle: list[str]) -> str:
    steps = [f"{a} (line {g[a][b]})" for a, b in pairwise(cycle)]
    return " -> ".join(steps) + f" -> {cycle[-1]}"


def test_every_package_is_in_a_layer():
    packages = {package(m) for m in modules()} - {""}
    assert packages <= {p for layer in LAYERS for p in layer}, packages


def test_imports_only_go_downward():
    bad, used = layer_violations(graph())
    assert not bad, "\n".join(bad)
    stale = ALLOWED_SIBLING - used
    assert not stale, f"allowed sibling imports that no longer exist (remove them): {stale}"


def test_no_import_cycle():
    g = graph()
    found = components(g)
    assert not found, "\n".join(f"{describe(g, _one_cycle(g, set(c)))} (the cycle's "
                                f"component: {', '.join(c)})" for c in found)


def test_the_walker_sees_function_level_relative_and_attribute_imports(tmp_path):
    pkg = tmp_path / "ahvlite"
    for sub in ("cluster", "sched", "virt", "net"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "sched" / "a.py").write_text(
        "def f():\n    from ahvlite.cluster.b import x\n    return x\n")
    (pkg / "cluster" / "b.py").write_text("from ..sched import a\nx = 1\n")
    (pkg / "virt" / "c.py").write_text("import ahvlite.net.d\n")
    (pkg / "net" / "d.py").write_text("from . import e\n")
    (pkg / "net" / "e.py").write_text("from ahvlite.net.d import y\n")
    g = graph(pkg)
    assert g["ahvlite.sched.a"] == {"ahvlite.cluster.b": 2}
    assert g["ahvlite.cluster.b"] == {"ahvlite.sched.a": 1}
    bad, _ = layer_violations(g)
    assert bad == ["ahvlite.sched.a:2 imports ahvlite.cluster.b: cluster is above sched",
                   "ahvlite.virt.c:1 imports ahvlite.net.d: net is a sibling of virt"]
    found = sorted(describe(g, c) for c in cycles(g))
    assert found == [
        "ahvlite.cluster.b (line 1) -> ahvlite.sched.a (line 2) -> ahvlite.cluster.b",
        "ahvlite.net.d (line 1) -> ahvlite.net.e (line 1) -> ahvlite.net.d"]
