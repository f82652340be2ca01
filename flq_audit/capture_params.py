"""Deprecated path of the parameter layers: import from :mod:`flq_audit.capture.params`."""

from __future__ import annotations

from flq_audit._moved import warn_moved
from flq_audit.capture.params import *  # noqa: F403  (the names of the 0.2 module)
from flq_audit.capture.params import __all__  # noqa: F401

warn_moved(__name__, "flq_audit.capture.params")
