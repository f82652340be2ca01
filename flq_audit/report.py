"""Deprecated path of the report's tables, verdict and findings: import from
:mod:`flq_audit.reading`."""

from __future__ import annotations

from typing import Any

from flq_audit._moved import warn_moved
from flq_audit.reading._report import *  # noqa: F403  (the names of the 0.2 module)
from flq_audit.reading._report import __all__ as _names

warn_moved(__name__)

#: The figure functions this module also gave, imported on first use (matplotlib).
_FIGURES = ("gram_spectrum_figure", "metric_curves", "tl_heatmap")


def __getattr__(name: str) -> Any:
    if name in _FIGURES:
        from flq_audit.reading import _figures

        return getattr(_figures, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [*_names, *_FIGURES]
