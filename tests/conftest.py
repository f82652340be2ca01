"""Test-wide isolation (a private HF home and cache per session, no real token, seeded RNGs),
the test tiers, and recipe runs trained once per session.

Offline mode is not forced: the Hub tests talk to servers on loopback (the machine has no
internet anyway), and the tests of offline mode set ``HF_HUB_OFFLINE`` in a subprocess.

Tiers (markers in pyproject.toml): every test runs by default except ``full`` ones (the full
recipes, minutes of training), which run only when selected (``-m full``) or with
``FLQ_AUDIT_FULL=1``; ``gpu`` tests are skipped without a CUDA device. A test that uses a
fixture of ``SLOW_FIXTURES`` is marked ``slow`` like the fixture, so ``-m "not slow"`` is fast.
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

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

#: Fixtures that start several CLI subprocesses: tests using them are ``slow`` too.
SLOW_FIXTURES = frozenset({"e2e"})
#: The grokking recipe, shortened: memorises by step 100, test accuracy 0.9 near step 2600.
GROKKING_FAST = {"p": 23, "lr": 5e-3, "total_steps": 3000, "checkpoint_every": 100}
#: The digits recipe, shortened: 50 steps give 7 checkpoints (0, 1, 2, 5, 10, 20, 50).
DIGITS_STEPS = 50


def _full_selected(config: pytest.Config) -> bool:
    return os.environ.get("FLQ_AUDIT_FULL") == "1" or "full" in (config.getoption("-m") or "")


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark users of slow fixtures ``slow``; skip ``full`` unless selected, ``gpu`` without CUDA."""
    full = _full_selected(config)
    cuda: bool | None = None
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        if "full" in item.keywords and not full:
            item.add_marker(pytest.mark.skip(reason="full recipe: select with -m full or FLQ_AUDIT_FULL=1"))
        if "gpu" in item.keywords:
            cuda = _cuda_available() if cuda is None else cuda
            if not cuda:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


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


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> Path:
    """The digits recipe trained once per session for ``DIGITS_STEPS`` steps (a few seconds)."""
    from flq_audit.recipes import digits_mlp

    return digits_mlp.train(tmp_path_factory.mktemp("digits") / "run", total_steps=DIGITS_STEPS)


@pytest.fixture(scope="session")
def digits_store(digits_run) -> Path:
    """``digits_run`` audited once per session (every step, default options), TL computed."""
    from flq_audit import api

    store = digits_run.parent / "digits.zarr"
    result = api.audit(str(digits_run), out=store)
    assert not result.failed, result.failed
    api.compute_metrics(store, metrics=["tl"])
    return store


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on loopback for the session (``tests/_helpers/s3.py``)."""
    from tests._helpers.requires import require_module

    require_module("s3fs", "s3fs is not installed (pip install -e '.[test]')")
    require_module("moto.server", "moto[server] is not installed (pip install -e '.[test]')")
    from tests._helpers.s3 import start_s3

    endpoint, server = start_s3()
    yield endpoint
    server.stop()


@pytest.fixture(scope="session")
def sgd_run_64(tmp_path_factory) -> Path:
    """``sgd_every_step``: 6 steps of plain SGD in float64, every step saved with its batch."""
    from flq_audit.recipes import sgd_every_step

    out = tmp_path_factory.mktemp("sgd64")
    return sgd_every_step.train(out, steps=6, lr=0.1, batch_size=32, dtype="float64", seed=0)


@pytest.fixture(scope="session")
def grokking_run(tmp_path_factory) -> Path:
    """The grokking recipe at ``GROKKING_FAST`` (several seconds of one core)."""
    from flq_audit.recipes import grokking_mlp

    return grokking_mlp.train(tmp_path_factory.mktemp("grokking") / "run", **GROKKING_FAST)
