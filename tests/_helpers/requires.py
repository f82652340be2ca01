"""What a test needs from the machine (a browser, the Hub server, a tmpfs mount, a C library).

Locally a missing piece skips the test with the reason. In CI (``CI`` set to ``true``, ``1``
or ``yes``, as ``.ci/run`` and the usual CI services set it) it fails the test instead: CI
installs every piece, so a missing one is a broken set-up, not a reason to pass quietly.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest

#: Values of ``CI`` that mean "running in CI" (compared in lower case).
CI_VALUES = frozenset({"true", "1", "yes"})


def in_ci() -> bool:
    """Whether the ``CI`` environment variable says this run is CI."""
    return os.environ.get("CI", "").strip().lower() in CI_VALUES


def missing(reason: str) -> NoReturn:
    """Skip the calling test with ``reason``; in CI, fail it with the same reason."""
    if in_ci():
        pytest.fail(f"{reason}; CI={os.environ['CI']} needs it (unset CI to skip instead)",
                    pytrace=False)
    pytest.skip(reason)


def require_module(name: str, reason: str) -> ModuleType:
    """``import name``, or :func:`missing` with ``reason`` when it cannot be imported."""
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(reason)
