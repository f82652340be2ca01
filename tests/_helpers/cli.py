"""Run the ``flq-audit`` command line in tests: as a real subprocess, or in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

#: Generous: one CLI start-up (torch, xarray, zarr imports) takes a few seconds.
TIMEOUT_S = 180


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: offline, no colour, wide lines."""
    env = dict(os.environ)
    env.update({
        "NO_COLOR": "1", "COLUMNS": "240", "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


def cli_command(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "flq_audit", *(str(a) for a in args)]


def run_cli(
    *args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None,
    timeout: float = TIMEOUT_S,
) -> subprocess.CompletedProcess[str]:
    """``python -m flq_audit ARGS`` in a real subprocess, output captured as text."""
    return subprocess.run(
        cli_command(*args), cwd=cwd, env=env or cli_env(), capture_output=True, text=True,
        timeout=timeout, check=False,
    )


def run_many(
    commands: dict[str, tuple[str | Path, ...]], *, timeout: float = TIMEOUT_S,
    env: dict[str, str] | None = None,
) -> dict[str, subprocess.CompletedProcess[str]]:
    """Run independent CLI commands side by side (start-up dominates: imports overlap)."""
    procs = {name: popen_cli(*args, env=env) for name, args in commands.items()}
    results = {}
    for name, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return results


def popen_cli(
    *args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    """Start ``python -m flq_audit ARGS`` without waiting (runs side by side)."""
    return subprocess.Popen(
        cli_command(*args), cwd=cwd, env=env or cli_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )


def invoke(*args: str | Path) -> Any:
    """Run the Typer app in-process (fast; for message checks). Returns click's Result."""
    from typer.testing import CliRunner

    from flq_audit.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def squash(text: str) -> str:
    """Drop all whitespace: Rich wraps long messages at the console width."""
    return "".join(text.split())


def assert_says(text: str, *needles: str) -> None:
    """Every needle occurs in ``text``, whatever line wrapping Rich applied."""
    flat = squash(text)
    for needle in needles:
        assert squash(needle) in flat, f"{needle!r} not in output:\n{text}"


def describe(result: Any) -> str:
    """Exit code, stdout and stderr of a subprocess or CliRunner result, for failure messages."""
    code = getattr(result, "returncode", getattr(result, "exit_code", None))
    extra = ""
    exc = getattr(result, "exception", None)
    if exc is not None and not isinstance(exc, SystemExit):
        import traceback

        extra = "".join(traceback.format_exception(exc))
    return f"exit {code}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}\n{extra}"


def load_json(stdout: str) -> Any:
    return json.loads(stdout)


def read_done(store: Path) -> np.ndarray | None:
    """The store's ``done`` flags read with plain zarr, or None while it is unreadable."""
    import zarr

    try:
        return np.asarray(zarr.open_group(str(store), mode="r")["done"][:], dtype=bool)
    except Exception:  # not created yet
        return None


def fault_env(spec: str) -> dict[str, str]:
    """A CLI environment with ``FLQ_AUDIT_FAULT=spec`` armed (see ``flq_audit._faults``)."""
    from flq_audit._faults import ENV_VAR

    return cli_env(**{ENV_VAR: spec})
