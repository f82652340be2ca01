"""Test-wide isolation: no network, a private HF cache, seeded RNGs."""

from __future__ import annotations

import os

# huggingface_hub reads these at import time: set them before anything imports it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _isolate(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("hf_home")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("NO_COLOR", "1")
    np.random.seed(0)


@pytest.fixture
def run_dir(tmp_path):
    """A small checkpoint folder: steps 0, 10, 20 with spec and probe."""
    from tests._helpers.runs import make_run

    return make_run(tmp_path / "run")


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace):
    doctest_namespace["np"] = np
