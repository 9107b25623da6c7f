"""The package's own import graph, read with ``ast``: cycles, imports inside functions, module sizes.

    python scripts/import_graph.py            # the tree with line counts, then any problem
    python scripts/import_graph.py --edges    # also every module -> module edge

Imports inside functions count as edges (that is how a cycle hides). ``tests/test_architecture.py``
asserts the rules of docs/ARCHITECTURE.md on the same functions: no cycle, no module over
:data:`MAX_LINES` lines, at most :data:`MAX_LOCAL_IMPORTS` own-package imports inside functions,
each with its reason in a comment on its line.
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = ROOT / "lib" / "clipunlearn"
PACKAGE = "clipunlearn"
MAX_LINES = 500
MAX_LOCAL_IMPORTS = 5


@dataclass
class Module:
    """One module of the package: its dotted name, file, size and own-package imports."""

    name: str
    path: Path
    lines: int
    imports: set[str] = field(default_factory=set)          # every own module it imports
    local_imports: list[tuple[int, str, str]] = field(default_factory=list)  # (line, module, source line)


def module_name(path: Path) -> str:
    """``lib/clipunlearn/harness/task.py`` -> ``clipunlearn.harness.task`` (a package: its ``__init__``)."""
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def resolve_import(node: ast.AST, *, current: str, is_package: bool, known: set[str]) -> list[str]:
    """Return the own modules an ``import`` / ``from ... import`` node reaches."""
    if isinstance(node, ast.Import):
        return [_known_prefix(a.name, known) for a in node.names if a.name.split(".")[0] == PACKAGE]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = current.split(".") if is_package else current.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
        if target.split(".")[0] != PACKAGE:
            return []
    out = []
    for alias in node.names:  # "from . import data" imports the module clipunlearn.data
        sub = f"{target}.{alias.name}"
        out.append(sub if sub in known else _known_prefix(target, known))
    return out


def _known_prefix(name: str, known: set[str]) -> str:
    parts = name.split(".")
    while parts and ".".join(parts) not in known:
        parts.pop()
    return ".".join(parts) or PACKAGE


def read_modules() -> dict[str, Module]:
    """Parse every module of the package; return ``{name: Module}``."""
    paths = sorted(PACKAGE_DIR.rglob("*.py"))
    known = {module_name(p) for p in paths}
    modules = {}
    for path in paths:
        text = path.read_text()
        name = module_name(path)
        mod = Module(name=name, path=path, lines=len(text.splitlines()))
        tree = ast.parse(text)
        source = text.splitlines()
        in_function = set()
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                in_function.update(id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom)))
        for node in ast.walk(tree):
            targets = resolve_import(node, current=name, is_package=path.name == "__init__.py", known=known)
            targets = [t for t in targets if t != name]
            mod.imports.update(targets)
            if targets and id(node) in in_function:
                mod.local_imports += [(node.lineno, t, source[node.lineno - 1].strip()) for t in sorted(set(targets))]
        modules[name] = mod
    return modules


def find_cycles(modules: dict[str, Module]) -> list[list[str]]:
    """Return the strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(modules[v].imports):
            if w not in modules:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(1000, 4 * len(modules)))
    for v in sorted(modules):
        if v not in index:
            visit(v)
    return out


def package_imports_are_edges(modules: dict[str, Module]) -> dict[str, Module]:
    """Drop the edges into a package's ``__init__`` that only re-export (``clipunlearn`` itself)."""
    for mod in modules.values():
        mod.imports.discard(PACKAGE)
    return modules


def format_tree(modules: dict[str, Module]) -> str:
    """The package as an indented tree with line counts."""
    lines, shown = [], set()
    for name in sorted(modules, key=lambda n: modules[n].path):
        mod = modules[name]
        rel = mod.path.relative_to(PACKAGE_DIR)
        for depth, folder in enumerate(rel.parts[:-1]):
            if rel.parts[:depth + 1] not in shown:  # a folder's name above its modules
                shown.add(rel.parts[:depth + 1])
                lines.append(f"{'  ' * depth}{folder}/")
        depth = len(rel.parts) - 1
        lines.append(f"{'  ' * depth}{rel.name:<{32 - 2 * depth}} {mod.lines:>5}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--edges", action="store_true", help="print every module -> module edge")
    args = ap.parse_args(argv)
    modules = package_imports_are_edges(read_modules())
    print(format_tree(modules))
    print(f"{len(modules)} modules, {sum(m.lines for m in modules.values())} lines")
    if args.edges:
        for name, mod in sorted(modules.items()):
            print(f"{name} -> {', '.join(sorted(mod.imports)) or '-'}")
    cycles = find_cycles(modules)
    big = [(m.name, m.lines) for m in modules.values() if m.lines > MAX_LINES]
    local = [(m.name, *x) for m in modules.values() for x in m.local_imports]
    print(f"cycles: {len(cycles)}" + "".join(f"\n  {' <-> '.join(c)}" for c in cycles))
    print(f"modules over {MAX_LINES} lines: {len(big)}" + "".join(f"\n  {n}: {k}" for n, k in big))
    print(f"own-package imports inside functions: {len(local)}"
          + "".join(f"\n  {n}:{line} -> {t}   {src}" for n, line, t, src in local))
    return 0 if not cycles and not big and len(local) <= MAX_LOCAL_IMPORTS else 1


if __name__ == "__main__":
    sys.exit(main())
