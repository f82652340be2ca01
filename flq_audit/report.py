"""Comparison reports: :func:`compare` sets runs side by side (``flq-audit compare``).

This is also the 0.2 path of the single-store report's tables, verdict, findings and figures,
which moved to :mod:`flq_audit.reading`: those names still resolve here, with a
``DeprecationWarning`` on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from flq_audit._moved import warn_moved

if TYPE_CHECKING:
    from flq_audit.reading._compare import RunComparison
    from flq_audit.store import StoreLocation

#: The figure functions the 0.2 module also gave.
_FIGURES = ("gram_spectrum_figure", "metric_curves", "tl_heatmap")


def compare(
    stores: Sequence[str | Path | StoreLocation], *, names: Sequence[str] | None = None,
    by: str | None = None, out: str | Path | None = None, report: str | Path | None = None,
    compute: bool = True, align: Literal["name", "depth"] = "name", across_probes: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> RunComparison:
    """Runs side by side: see :func:`flq_audit.api.compare` (the same function)."""
    from flq_audit import api

    return api.compare(stores, names=names, by=by, out=out, report=report, compute=compute,
                       align=align, across_probes=across_probes,
                       storage_options=storage_options)


def __getattr__(name: str) -> Any:
    old = importlib.import_module("flq_audit.reading._report")
    if name in _FIGURES:
        warn_moved(__name__)
        return getattr(importlib.import_module("flq_audit.reading._figures"), name)
    if name in old.__all__:
        warn_moved(__name__)
        return getattr(old, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["compare"]
