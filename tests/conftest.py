"""Test-wide isolation: a private HF home and cache per session, no real token, seeded RNGs.

Offline mode is not forced: the Hub tests talk to servers on loopback (the machine has no
internet anyway), and the tests of offline mode set ``HF_HUB_OFFLINE`` in a subprocess.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# huggingface_hub reads these at import time: set them before anything imports it.
_HF_HOME = tempfile.mkdtemp(prefix="flq-hf-home-")
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_CACHE"] = os.path.join(_HF_HOME, "hub")
for _name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.pop(_name, None)
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _isolate(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("hf_home")
    monkeypatch.setenv("HF_HOME", str(home))  # for subprocesses; this process read it at import
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
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
