"""What a store needs of an fsspec filesystem: a release new enough, and every operation it calls.

An old release of a filesystem package can import and list fine, then lack an operation the
store calls later (s3fs 0.4 has no ``rm_file``, so a claim could be made and never released).
:func:`check_release` refuses such a release before anything is written, and
:func:`checked` turns a ``NotImplementedError`` from any filesystem call into an
:class:`~flq_audit.errors.OptionError` (exit 2) that names the package and its version.
"""

from __future__ import annotations

import functools
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from packaging.version import Version

from flq_audit.errors import OptionError

#: The oldest release of each filesystem package that provides every operation the store uses
#: (``ls``, ``info``, ``cat_file``, ``pipe_file`` with ``mode="create"``, ``rm_file``, ``rm``).
MINIMUM_RELEASES = {"s3fs": "2025.9.0"}
#: Extras of flq-audit that install a package at a release it supports.
EXTRAS = {"s3fs": "s3"}


def installed_version(package: str) -> str | None:
    """The installed release of ``package``, or None when it is not installed."""
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _install_hint(package: str) -> str:
    hint = f"pip install -U '{package}>={MINIMUM_RELEASES[package]}'"
    if package in EXTRAS:
        hint += f" (or pip install -U 'flq-audit[{EXTRAS[package]}]')"
    return f"Run `{hint}`, then try again."


def check_release(package: str, url: str) -> None:
    """Refuse (exit 2) a ``package`` older than the release the store needs."""
    needed = MINIMUM_RELEASES.get(package)
    found = installed_version(package)
    if needed is None or found is None or Version(found) >= Version(needed):
        return
    raise OptionError(
        f"store {url!r}: {package} {found} is installed, but flq-audit needs {package} >= {needed} "
        "(older releases lack filesystem operations the store uses)",
        hint=_install_hint(package))


def _package_of(fs: Any) -> str:
    return type(fs).__module__.split(".")[0]


def unsupported(fs: Any, operation: str, url: str) -> OptionError:
    """The error for a filesystem that lacks ``operation``: names the package and its version."""
    package = _package_of(fs)
    found = installed_version(package) or "(version unknown)"
    hint = (_install_hint(package) if package in MINIMUM_RELEASES
            else f"Upgrade {package}, or use a filesystem that implements {operation}().")
    return OptionError(
        f"store {url!r}: the {type(fs).__name__} filesystem of {package} {found} does not "
        f"implement {operation}(), which the store needs", hint=hint)


class CheckedFilesystem:
    """An fsspec filesystem whose missing operations raise :func:`unsupported`, not a bare
    ``NotImplementedError``; every other attribute is the filesystem's own."""

    def __init__(self, fs: Any, url: str) -> None:
        self._fs = fs
        self._url = url

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._fs, name)
        if not callable(value) or name.startswith("_"):
            return value

        @functools.wraps(value)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return value(*args, **kwargs)
            except NotImplementedError as err:
                raise unsupported(self._fs, name, self._url) from err

        return call


def checked(fs: Any, url: str) -> Any:
    """``fs`` wrapped in :class:`CheckedFilesystem`."""
    return CheckedFilesystem(fs, url)


__all__ = ["MINIMUM_RELEASES", "CheckedFilesystem", "check_release", "checked", "unsupported"]
