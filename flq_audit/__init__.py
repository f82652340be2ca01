"""flq-audit: how did each layer's features evolve over training?

Audit a checkpoint sequence into a chunked Zarr store indexed by ``step`` and ``layer``, then
compute feature-linearization metrics lazily and export them.
"""

from __future__ import annotations

#: The one place the version is written: ``pyproject.toml`` reads it from here, so an
#: editable install and a source tree never report a stale one.
__version__ = "0.3.0"

from flq_audit._accessor_hook import register_accessor_with_xarray as _register

# ``ds.flq`` is registered when xarray is imported (at once if it already is): an audit,
# which never imports xarray, does not pay for it.
_register()

__all__ = ["__version__", "open_runs"]


def __getattr__(name: str) -> object:
    """``flq_audit.open_runs`` loads the read side (xarray) on first use."""
    if name == "open_runs":
        from flq_audit.api import open_runs

        return open_runs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
