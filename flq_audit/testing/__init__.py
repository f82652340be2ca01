"""Conformance suites for the two extension points: checkpoint sources and per-step
extensions (pytest base classes, as ``zarr.testing.store.StoreTests``).

Importing this package imports pytest and registers nothing: a subclass named ``Test...`` in
a test module gets every check of its base class. See docs/extending.md.
"""

from __future__ import annotations

from flq_audit.testing.extensions import ExtensionTests
from flq_audit.testing.sources import SourceTests, roundtrip

__all__ = ["ExtensionTests", "SourceTests", "roundtrip"]
