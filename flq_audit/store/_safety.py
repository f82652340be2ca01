"""Which paths flq-audit may delete or overwrite: only what it made itself.

A path counts as an flq-audit store when its root ``zarr.json`` says so (the
``Conventions`` attribute names ``flq-audit``), or when it is the hidden sibling folder a store
is built in (``.NAME.flq-creating``, holding a creation marker) and its creator died.
Everything else (a user's folder, a file, the checkpoint source, a folder above it) is
refused with :class:`~flq_audit.errors.UnsafeDeletionError` (exit 2) naming the path and why.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path

from flq_audit.errors import ExportFolderNotFoundError, UnsafeDeletionError
from flq_audit.store._location import StoreLocation

#: File written first into a store being built; its presence marks the build as unfinished.
CREATING_MARKER = ".flq-audit-creating"
#: Suffix of the hidden sibling folder a new store is built in before it is renamed into place.
CREATING_SUFFIX = ".flq-creating"
#: Written into a folder by ``report``: such a folder may be written again.
REPORT_MARKER = ".flq-audit-report"


def building_path(store: Path) -> Path:
    """The hidden sibling folder in which ``store`` is built (renamed into place when done)."""
    return store.parent / f".{store.name}{CREATING_SUFFIX}"


def root_attributes(path: Path) -> dict | None:
    """The attributes in ``path/zarr.json`` when it is a Zarr group, else None."""
    try:
        meta = json.loads((path / "zarr.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("node_type") != "group":
        return None
    attrs = meta.get("attributes")
    return attrs if isinstance(attrs, dict) else {}


def is_flq_store(path: str | Path) -> bool:
    """``path`` is a folder whose root metadata marks it as an flq-audit store."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        return False
    attrs = root_attributes(path)
    return attrs is not None and "flq-audit" in str(attrs.get("Conventions", ""))


def is_unfinished_build(path: str | Path) -> bool:
    """``path`` is a store folder whose creation never finished (it holds no finished step)."""
    path = Path(path)
    return path.is_dir() and not path.is_symlink() and (path / CREATING_MARKER).is_file()


def enclosing_store(path: str | Path) -> Path | None:
    """The flq-audit or Zarr store that ``path`` is, or lies inside; None when there is none."""
    resolved = Path(path).expanduser().resolve()
    for candidate in (resolved, *resolved.parents):
        if is_flq_store(candidate) or (candidate / "zarr.json").is_file():
            return candidate
    return None


def _relation(path: Path, protected: Path) -> str | None:
    if path == protected:
        return "is the checkpoint source"
    if path in protected.parents:
        return f"contains the checkpoint source {str(protected)!r}"
    if protected in path.parents:
        return f"lies inside the checkpoint source {str(protected)!r}"
    return None


def check_removable(path: str | Path, *, protected: Iterable[str | Path] = (),
                    flag: str = "--overwrite") -> None:
    """Raise :class:`UnsafeDeletionError` unless ``path`` is an flq-audit store we may delete."""
    given = Path(path)
    if given.is_symlink():
        reason = "is a symbolic link, not an flq-audit store"
    elif given.exists() and not given.is_dir():
        reason = "is a file, not an flq-audit store"
    else:
        reason = None
    resolved = given.expanduser().resolve()
    for item in protected:
        reason = reason or _relation(resolved, Path(item).expanduser().resolve())
    if reason is None and given.exists() and not (
            is_flq_store(given) or is_unfinished_build(given)):
        reason = "is not an flq-audit store (its zarr.json does not say so)"
    if reason is not None:
        raise UnsafeDeletionError(
            f"{flag} refused: {str(path)!r} {reason}; nothing was deleted", path=path,
            hint="Choose another --out (flq-audit only replaces stores it made).",
        )


def remove_store(path: str | Path, *, protected: Iterable[str | Path] = (),
                 flag: str = "--overwrite") -> None:
    """Delete an flq-audit store after :func:`check_removable` allowed it."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    check_removable(path, protected=protected, flag=flag)
    shutil.rmtree(path)


def check_removable_location(location: StoreLocation, *, protected: Iterable[str | Path] = (),
                             flag: str = "--overwrite") -> None:
    """:func:`check_removable` for a local or URL store: a URL prefix may be emptied only when
    it holds an flq-audit store, or nothing but claims (a template whose builder died)."""
    if location.is_local:
        check_removable(location.path, protected=protected, flag=flag)
        return
    from flq_audit.store import root_metadata

    meta = root_metadata(location)
    if meta is not None:
        if "flq-audit" in str((meta.get("attributes") or {}).get("Conventions", "")):
            return
        reason = "is a Zarr store but not an flq-audit store"
    else:
        fs, root = location.filesystem()
        fs.invalidate_cache()
        entries = fs.ls(root, detail=False) if fs.exists(root) else []
        others = [e for e in entries if str(e).rstrip("/").rsplit("/", 1)[-1] != ".flq"]
        if not others:
            return
        reason = "holds objects that are not an flq-audit store (no zarr.json saying so)"
    raise UnsafeDeletionError(
        f"{flag} refused: {location.display!r} {reason}; nothing was deleted",
        path=location.display,
        hint="Choose another --out (flq-audit only replaces stores it made).")


def check_export_target(out: str | Path, store: str | Path | None = None) -> None:
    """Refuse an export target that is a folder, a store, or lies inside one."""
    target = Path(out)
    if target.is_dir():
        reason = "is a folder"
    elif (inside := enclosing_store(target)) is not None:
        reason = f"lies inside the store {str(inside)!r}"
    elif store is not None and target.expanduser().resolve() == Path(store).expanduser().resolve():
        reason = "is the store being exported"
    elif target.is_file() and not _looks_like_netcdf(target):
        reason = "is an existing file that is not NetCDF/HDF5"
    else:
        _require_folder(out)
        return
    raise UnsafeDeletionError(
        f"export target {str(out)!r} {reason}; nothing was written", path=out,
        hint="Give a new file name ending in .nc, outside any store.",
    )


def _require_folder(out: str | Path) -> None:
    """The folder of an export target exists (exit 3 naming it; nothing is created)."""
    folder = Path(out).expanduser().parent
    if folder.is_dir():
        return
    state = "is not a folder" if folder.exists() else "does not exist"
    raise ExportFolderNotFoundError(
        f"export target {str(out)!r}: the folder {str(folder)!r} {state}; nothing was written",
        path=folder, hint="Give a file in an existing folder (or create the folder first).")


def check_report_folder(folder: str | Path) -> None:
    """Refuse a report folder that is a store, lies inside one, or holds files report did not write."""
    target = Path(folder)
    if target.exists() and not target.is_dir():
        reason = "is a file"
    elif (inside := enclosing_store(target)) is not None:
        reason = f"lies inside the store {str(inside)!r}"
    elif target.is_dir() and any(target.iterdir()) and not (target / REPORT_MARKER).is_file():
        reason = "is a folder that holds files flq-audit report did not write"
    else:
        return
    raise UnsafeDeletionError(
        f"report --out {str(folder)!r} {reason}; nothing was written", path=folder,
        hint="Give a new or empty folder.",
    )


def _looks_like_netcdf(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
    except OSError:
        return False
    return head.startswith((b"\x89HDF\r\n\x1a\n", b"CDF\x01", b"CDF\x02", b"CDF\x05"))


__all__ = [
    "CREATING_MARKER",
    "REPORT_MARKER",
    "building_path",
    "check_export_target",
    "check_removable",
    "check_removable_location",
    "check_report_folder",
    "enclosing_store",
    "is_flq_store",
    "is_unfinished_build",
    "remove_store",
]
