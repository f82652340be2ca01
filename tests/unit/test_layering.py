"""Imports point forward only (cli → api → stages); metrics never touch torch or zarr."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import flq_audit

PACKAGE = Path(flq_audit.__file__).parent


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules(subpackage: str) -> list[Path]:
    root = PACKAGE / subpackage
    return sorted(root.rglob("*.py")) if root.is_dir() else [root.with_suffix(".py")]


def test_metrics_import_only_numerics():
    banned = ("torch", "zarr", "huggingface_hub", "safetensors", "flq_audit.store",
              "flq_audit.capture", "flq_audit.sources")
    for path in _modules("metrics"):
        bad = [m for m in _imports(path) if m.startswith(banned)]
        assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"


def test_sources_never_import_store_and_nothing_imports_cli():
    for path in _modules("sources"):
        assert not [m for m in _imports(path) if m.startswith("flq_audit.store")], path
    for path in PACKAGE.rglob("*.py"):
        if "cli" in path.relative_to(PACKAGE).parts or path.name == "__main__.py":
            continue
        assert not [m for m in _imports(path) if m.startswith("flq_audit.cli")], path


def test_store_and_read_side_never_import_capture_or_torch():
    """Not even inside a function: the store's Gram maths are NumPy (``flq_audit._gram_maths``)."""
    banned = ("torch", "flq_audit.capture", "flq_audit.audit", "flq_audit.models")
    for path in [*_modules("store"), *_modules("reading"), PACKAGE / "_gram_maths.py"]:
        bad = [m for m in _imports(path) if m.startswith(banned)]
        assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"


def test_import_flq_audit_is_torch_free():
    code = "import sys, flq_audit; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_modules_stay_small():
    too_long = {
        str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 400
    }
    assert not too_long, too_long


_HEAVY = ("torch", "transformers")

#: What ``show`` never needs: the metric engine and registry (dask.array, scipy, entry-point
#: plugins), dask's distributed scheduler, plotting, the Hub client, sklearn, safetensors.
_NOT_ON_SHOW_PATH = (*_HEAVY, "flq_audit.metrics", "dask.array", "distributed", "scipy",
                     "matplotlib", "huggingface_hub", "sklearn", "safetensors")
#: ``--help`` does not open a store either.
_NOT_ON_HELP_PATH = (*_NOT_ON_SHOW_PATH, "zarr")


def _report(modules: tuple[str, ...]) -> str:
    """Code that prints, at interpreter exit, which of ``modules`` the process loaded."""
    return ("import atexit, sys\n"
            "atexit.register(lambda: print('HEAVY=' + ','.join("
            f"m for m in {modules!r} if m in sys.modules)))\n")


def _heavy_after(code: str, cwd: Path | None = None, modules: tuple[str, ...] = _HEAVY,
                 ) -> tuple[str, subprocess.CompletedProcess]:
    import os

    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent), "NO_COLOR": "1"}
    out = subprocess.run([sys.executable, "-c", _report(modules) + code], capture_output=True,
                         text=True, env=env, cwd=cwd, timeout=300)
    lines = [line for line in out.stdout.splitlines() if line.startswith("HEAVY=")]
    assert lines, out.stderr
    return lines[-1].removeprefix("HEAVY="), out


def test_read_side_modules_import_neither_torch_nor_transformers():
    modules = ("flq_audit.store", "flq_audit.store._writer", "flq_audit.metrics",
               "flq_audit.reading", "flq_audit.reading._export", "flq_audit.reading._folder",
               "flq_audit.reading._html", "flq_audit.api", "flq_audit.options", "flq_audit.audit",
               "flq_audit.cli")
    heavy, out = _heavy_after("".join(f"import {m}\n" for m in modules))
    assert heavy == "", (heavy, out.stderr)


def test_read_side_commands_import_neither_torch_nor_transformers(run_dir, tmp_path):
    from flq_audit import api

    store = tmp_path / "s.zarr"
    api.audit(str(run_dir), out=store)
    main = "from flq_audit.cli import main\ntry:\n    main({args!r})\nexcept SystemExit as e:\n" \
           "    print('EXIT', e.code)\n"
    commands = [["--help"], ["show", str(store)], ["metrics", str(store), "--json"],
                ["export", str(store), str(tmp_path / "m.nc")],
                ["report", str(store), "--out", str(tmp_path / "report")]]
    for args in commands:
        banned = {"--help": _NOT_ON_HELP_PATH, "show": _NOT_ON_SHOW_PATH}.get(args[0], _HEAVY)
        heavy, out = _heavy_after(main.format(args=args), cwd=tmp_path, modules=banned)
        assert "EXIT 0" in out.stdout or "EXIT None" in out.stdout, (args, out.stdout, out.stderr)
        assert heavy == "", (args, heavy)
