"""No import cycle in flq_audit: the graph of its imports is acyclic outside lazy registries,
and every module imports on its own in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import flq_audit

PACKAGE = Path(flq_audit.__file__).parent

#: Imports inside these functions load a registry on first use (they may point back).
LAZY_REGISTRIES = {
    ("flq_audit.metrics._spec", "registry"),  # the built-in metric groups register themselves
    ("flq_audit.store._safety", "check_removable_location"),  # the store package's facade
}


def _name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _target(module: str, node: ast.ImportFrom | ast.Import, name: str) -> str | None:
    """The flq_audit module an import names (a submodule when it imports one)."""
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            here = module.split(".") if MODULES[module].name == "__init__.py" else \
                module.split(".")[:-1]
            here = here[: len(here) - node.level + 1]
            base = ".".join([*here, *([base] if base else [])])
        full = f"{base}.{name}"
        target = full if full in MODULES else base
    else:
        target = name
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def _skipped(module: str, function: str, *, top: bool, functions: bool) -> bool:
    """Whether a function's imports stay out of the graph."""
    return not functions or (top and function == "__getattr__") or \
        (module, function) in LAZY_REGISTRIES


def _imports(module: str, *, functions: bool) -> set[str]:
    """What ``module`` imports: at top level, and with ``functions`` also inside functions
    (not under ``TYPE_CHECKING``, not in a module ``__getattr__`` or a lazy registry)."""
    out: set[str] = set()

    def visit(nodes: list[ast.stmt] | list[ast.AST], top: bool) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse, top)
                continue
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _skipped(
                    module, node.name, top=top, functions=functions):
                continue
            if isinstance(node, ast.Import | ast.ImportFrom):
                for alias in node.names:
                    target = _target(module, node, alias.name)
                    if target is not None and target != module:
                        out.add(target)
            visit(list(ast.iter_child_nodes(node)), False)

    visit(ast.parse(MODULES[module].read_text()).body, True)
    return out


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (its modules in order), or ``None``."""
    state: dict[str, int] = {}
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := walk(nxt)) is not None:
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := walk(node)) is not None:
            return found
    return None


def test_top_level_imports_have_no_cycle():
    graph = {m: {t for t in _imports(m, functions=False) if t.startswith("flq_audit")}
             for m in MODULES}
    assert _cycle(graph) is None, " → ".join(_cycle(graph) or [])


def test_imports_at_run_time_have_no_cycle_outside_lazy_registries():
    graph = {m: {t for t in _imports(m, functions=True) if t.startswith("flq_audit")}
             for m in MODULES}
    assert _cycle(graph) is None, " → ".join(_cycle(graph) or [])


def test_every_module_imports_alone_in_a_fresh_interpreter():
    # flq_audit's modules are dropped before each import (third-party ones stay loaded), so
    # each is imported first, as a program that starts with it would.
    code = (
        "import importlib, sys\n"
        f"failed = []\nfor name in {sorted(MODULES)!r}:\n"
        "    for loaded in [m for m in sys.modules if m.split('.')[0] == 'flq_audit']:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n        importlib.import_module(name)\n"
        "    except Exception as err:\n        failed.append(f'{name}: {err!r}')\n"
        "print('\\n'.join(failed))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=PACKAGE.parent)
    assert out.stdout.strip() == "", out.stdout
