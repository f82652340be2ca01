"""Deprecated path of the report page: import from :mod:`flq_audit.reading`."""

from __future__ import annotations

from flq_audit._moved import warn_moved
from flq_audit.reading._html import *  # noqa: F403  (the names of the 0.2 module)
from flq_audit.reading._html import __all__  # noqa: F401

warn_moved(__name__)
