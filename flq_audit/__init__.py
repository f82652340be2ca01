"""flq-audit: how did each layer's features evolve over training?

Audit a checkpoint sequence into a chunked Zarr store indexed by ``step`` and ``layer``, then
compute feature-linearization metrics lazily and export them.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("flq-audit")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

__all__ = ["__version__"]

from flq_audit import accessor as _accessor  # noqa: F401  (registers ``ds.flq``)
