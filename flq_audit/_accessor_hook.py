"""Register ``ds.flq`` when xarray is imported, without importing xarray here.

``import flq_audit`` promises the ``ds.flq`` accessor, but an audit never builds an xarray
object: importing xarray (and pandas with it) would be a fixed cost of every audit. So the
package registers the accessor at once when xarray is already loaded, and otherwise puts a
finder on :data:`sys.meta_path` that lets xarray's own loader run and then imports
:mod:`flq_audit.reading` (which registers the accessor). The finder removes itself on its
first use, so it is consulted for nothing else.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

_WATCHED = "xarray"
_READING = "flq_audit.reading"


class _RegisteringLoader(importlib.abc.Loader):
    """xarray's own loader, with ``flq_audit.reading`` imported once xarray is executed."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        importlib.import_module(_READING)

    def __getattr__(self, name: str) -> Any:  # resources, is_package, get_code ...
        return getattr(self._loader, name)


class _XarrayFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of the spec the other finders give xarray."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != _WATCHED:
            return None
        uninstall()
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


def uninstall() -> None:
    """Take the finder off :data:`sys.meta_path` (nothing happens if it is not there)."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _XarrayFinder)]


def register_accessor_with_xarray() -> None:
    """Register ``ds.flq`` now if xarray is loaded, else as soon as it is imported."""
    if _WATCHED in sys.modules:
        importlib.import_module(_READING)
    elif not any(isinstance(f, _XarrayFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _XarrayFinder())
