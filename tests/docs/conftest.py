"""The working folder of a docs page."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def page_dir(tmp_path, monkeypatch) -> Iterator[Path]:
    """A fresh folder, the working directory, with ``python`` and ``flq-audit`` on PATH."""
    work, shims = tmp_path / "work", tmp_path / "bin"
    work.mkdir()
    shims.mkdir()
    for name, command in (("python", ""), ("flq-audit", " -m flq_audit")):
        (shims / name).write_text(f'#!/bin/sh\nexec "{sys.executable}"{command} "$@"\n')
        (shims / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{shims}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # a page's own training script on a shared 2-core machine
    monkeypatch.chdir(work)
    monkeypatch.syspath_prepend(str(work))
    yield work
    for name, module in list(sys.modules.items()):  # a page's own modules (nets.py) stay with it
        if str(getattr(module, "__file__", None) or "").startswith(str(work)):
            del sys.modules[name]
