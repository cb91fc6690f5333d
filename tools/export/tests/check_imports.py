#!/usr/bin/env python3
"""Check the layout of tools/export (standard library only: no torch, no onnx needed).

    python3 tools/export/tests/check_imports.py [DIR]     (DIR: default tools/export)

* every .py file under tools/export compiles (``py_compile``);
* a family exporter (``*_export.py``) imports ``common``, and of the local modules only the
  shared library modules (``LIBRARIES``: ``common``, ``prefix_decoder``) and stand-alone tools:
  no other exporter (no other ``*_export`` module, not ``export``);
* a shared library module imports only other shared library modules and stand-alone tools
  (never an exporter; ``common`` runs ``quantize.py`` for the ``--int8`` / ``--int4`` flags);
* every local module is a family exporter, a shared library module, ``export.py`` or a
  stand-alone tool;
* ``export.py`` imports only ``common`` of the local modules, and every module named in its
  ``COMMANDS`` table is a family exporter file that defines ``add_parser``;
* the stand-alone tools (``uint8_prefix.py``, ``quantize.py``, ``verify_*.py``) import no exporter, no
  ``common`` and not torch / transformers (the Rust tests run ``uint8_prefix.py`` with only numpy
  and onnx installed);
* the local import graph has no cycle.

Exit status 1 with one line per problem, 0 with a summary otherwise.
"""

from __future__ import annotations

import ast
import py_compile
import sys
from pathlib import Path

HERE = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]
HEAVY = {"torch", "transformers"}
#: shared library modules: importable by exporters, not commands themselves
LIBRARIES = {"common", "prefix_decoder"}


def imports_of(path: Path) -> set[str]:
    """Top-level names of every module imported anywhere in the file (function bodies too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                names.add(node.args[0].value.split(".")[0])
    return names


def commands_table(path: Path) -> dict[str, str]:
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "COMMANDS" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def defines(path: Path, name: str) -> bool:
    return any(isinstance(n, ast.FunctionDef) and n.name == name
               for n in ast.parse(path.read_text(encoding="utf-8")).body)


def main() -> int:
    problems: list[str] = []
    files = sorted(HERE.rglob("*.py"))
    for f in files:
        try:
            py_compile.compile(str(f), doraise=True, cfile=None)
        except py_compile.PyCompileError as e:
            problems.append(f"{f.relative_to(HERE)}: does not compile: {e.msg}")
    local = {f.stem: f for f in HERE.glob("*.py")}
    families = {n for n in local if n.endswith("_export")}
    graph = {n: imports_of(f) & set(local) for n, f in local.items()}
    tools = [n for n in local if n in ("uint8_prefix", "quantize") or n.startswith("verify_")]

    for fam in sorted(families):
        if "common" not in graph[fam]:
            problems.append(f"{fam}.py: does not import common")
        for other in sorted(graph[fam] & (families | {"export"})):
            problems.append(f"{fam}.py: imports the exporter {other}")
        for other in sorted(graph[fam] - families - {"export"} - LIBRARIES - set(tools)):
            problems.append(f"{fam}.py: imports {other}, which is not a shared library module")
    for lib in sorted(LIBRARIES & set(local)):
        for bad in sorted(graph[lib] & (families | {"export"})):
            problems.append(f"{lib}.py: imports the exporter {bad}")
        for bad in sorted(graph[lib] - families - {"export"} - LIBRARIES - set(tools)):
            problems.append(f"{lib}.py: imports {bad}, which is neither a shared library module nor a stand-alone tool")
    if "export" in graph:
        for bad in sorted(graph["export"] - {"common"} - families):
            problems.append(f"export.py: imports {bad}")
        table = commands_table(local["export"])
        if not table:
            problems.append("export.py: no COMMANDS table")
        for cmd, mod in table.items():
            if mod not in families:
                problems.append(f"export.py: command {cmd!r} maps to {mod!r}, not a family exporter file")
            elif not defines(local[mod], "add_parser"):
                problems.append(f"{mod}.py: no add_parser (needed for command {cmd!r})")
    for odd in sorted(set(local) - families - LIBRARIES - {"export"} - set(tools)):
        problems.append(f"{odd}.py: neither a family exporter (*_export.py), a shared library module "
                        f"({', '.join(sorted(LIBRARIES))}), export.py nor a stand-alone tool")
    for tool in sorted(tools):
        for bad in sorted((imports_of(local[tool]) & HEAVY) | (graph[tool] & (families | {"export"} | LIBRARIES))):
            problems.append(f"{tool}.py: imports {bad} (stand-alone tools stay torch-free and self-contained)")

    # cycles (depth-first search over the local graph)
    state: dict[str, int] = {}

    def visit(n: str, stack: list[str]) -> None:
        state[n] = 1
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                problems.append("import cycle: " + " -> ".join(stack[stack.index(m):] + [n, m]) if m in stack
                                else f"import cycle: {n} -> {m}")
            elif m not in state:
                visit(m, stack + [n])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [])

    for p in problems:
        print(f"check_imports: {p}")
    if problems:
        return 1
    print(f"check_imports: ok: {len(files)} files compile; families {sorted(families)} import only "
          f"the shared library modules {sorted(LIBRARIES)}; "
          f"export.py dispatches {len(commands_table(local['export']))} commands; no cycle; "
          f"{sorted(tools)} torch-free")
    for n in sorted(graph):
        print(f"  {n}: {sorted(graph[n]) or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
