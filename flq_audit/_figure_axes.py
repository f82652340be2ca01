"""Deprecated path of the figures' axis rules: now :mod:`flq_audit.reading._figure_axes`."""

from __future__ import annotations

from flq_audit._moved import warn_moved
from flq_audit.reading._figure_axes import *  # noqa: F403  (the names of the 0.2 module)
from flq_audit.reading._figure_axes import __all__  # noqa: F401

warn_moved(__name__, "flq_audit.reading._figure_axes")
