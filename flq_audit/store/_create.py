"""Create a store once, or check that an existing one can be resumed (joined) by this run.

**Local folders.** A new store is built inside a hidden sibling folder (``.NAME.flq-creating``,
which holds a creation marker) and renamed into place only once its template is complete, so
``STORE`` either does not exist or is a whole store. Creation and the resume check run under the
store's kernel lock (``STORE.lock``, held only for that moment): two writers starting together
build it once, and the second joins. A build left by a killed process holds no finished step:
the next run (which holds the lock, so the builder is gone) deletes it and builds again.

**URL stores** (object storage has no rename). The builder first takes the ``template`` claim
(see :mod:`flq_audit.store._claims`), writes every template object except the ``done`` array,
then ``done`` last, and marks the claim finished. A store without ``done`` whose ``template``
claim is not live is a half-written template (its builder died): it is deleted and built
again. Other writers wait while the ``template`` claim is live, then check the fingerprint and
join.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Literal

import numpy as np
import zarr

from flq_audit._faults import fault_point
from flq_audit.errors import FlqAuditError, StoreError, StoreMismatchError
from flq_audit.store._claims import StepClaims
from flq_audit.store._grow import (
    appendable,
    grow_axis,
    open_fresh,
    refuse_unplaceable,
    stored_steps,
)
from flq_audit.store._location import StoreLocation
from flq_audit.store._lock import store_lock
from flq_audit.store._safety import (
    CREATING_MARKER,
    building_path,
    check_removable_location,
    is_flq_store,
    is_unfinished_build,
    remove_store,
    root_attributes,
)
from flq_audit.store._schema import (
    DONE,
    StoreLayout,
    fingerprint_differences,
)
from flq_audit.store._template import write_template
from flq_audit.store._writer import StepWriter, zarr_array

NEW_OUT_HINT = ("Choose a new --out for this audit (the existing store keeps its finished "
                "steps); --overwrite would discard them.")


def create_or_resume(
    path: str | Path | StoreLocation, layout: StoreLayout, *, overwrite: bool = False,
    version: str, claims: StepClaims | None = None,
) -> StepWriter:
    """Write the template (or check an existing store fits) and return a writer.

    Safe to call from several writers at once: the template is built by one of them and the
    others join (a local store under its kernel lock, a URL store under the ``template``
    claim of ``claims``). ``overwrite`` assumes a single writer.

    Raises
    ------
    UnsafeDeletionError
        ``overwrite`` names something that is not an flq-audit store, or the source.
    StoreMismatchError
        The store exists and was made from another source, probe, layer set or config, or
        some selected steps fall between its steps (its axis grows only at its end).

    Steps of the layout after the store's last step (the source gained them) are appended
    to its axis (:func:`flq_audit.store._grow.grow_axis`).
    """
    location = StoreLocation.parse(path)
    own = claims is None
    claims = claims or StepClaims(location)
    try:
        if location.is_local:
            with store_lock(location.path, wait=True):
                _create_or_resume_local(location.path, layout, overwrite=overwrite,
                                        version=version)
        else:
            _create_or_resume_url(location, layout, overwrite=overwrite, version=version,
                                  claims=claims)
        grow_axis(location, layout, claims)
    finally:
        if own:
            claims.close()
    return StepWriter(location, layout)


def _create_or_resume_local(path: Path, layout: StoreLayout, *, overwrite: bool,
                            version: str) -> None:
    protected = source_paths(layout)
    building = building_path(path)
    if is_unfinished_build(building):  # its builder died: we hold the lock
        shutil.rmtree(building)
    if overwrite or _never_finished(path):
        remove_store(path, protected=protected)
    if path.exists() or path.is_symlink():
        _check_resumable(path, layout)
    else:
        _create(path, building, layout, version)


def _create_or_resume_url(location: StoreLocation, layout: StoreLayout, *, overwrite: bool,
                          version: str, claims: StepClaims) -> None:
    while not claims.claim("template"):
        current = claims.read("template")
        if current is not None and current.finished:
            if overwrite:  # a finished store is replaced: its template claim goes with it
                check_removable_location(location)
                location.delete()
                continue
            _check_resumable(location, layout)
            return
        time.sleep(min(1.0, claims.lease_s / 4))  # another writer is building it
    try:
        if overwrite or (location.exists() and not _has_done(location)):
            check_removable_location(location)
            _delete_all_but_claims(location)
        if _has_done(location):
            _check_resumable(location, layout)
        else:
            _create_url(location, layout, version)
    except BaseException:
        claims.release("template")
        raise
    claims.finish("template")


def _has_done(location: StoreLocation) -> bool:
    return location.read_bytes(f"{DONE}/zarr.json") is not None


def _delete_all_but_claims(location: StoreLocation) -> None:
    """Empty a URL store except its claims (the ``template`` claim held by this writer)."""
    fs, root = location.filesystem()
    fs.invalidate_cache()
    for entry in fs.ls(root, detail=False) if fs.exists(root) else []:
        if str(entry).rstrip("/").rsplit("/", 1)[-1] != ".flq":
            fs.rm(entry, recursive=True)


def _create_url(location: StoreLocation, layout: StoreLayout, version: str) -> None:
    """The template without ``done``, then ``done``: a store without it is half written."""
    try:
        write_template(location.zarr_store(), layout, version=version, mode="a",
                       before_done=lambda: fault_point("store-create"))
    except (OSError, FlqAuditError):
        raise
    except Exception as err:
        raise StoreError(f"cannot create store {location.display!r} ({err})",
                         path=location.display) from err


StoreAction = Literal["new", "resume", "replace", "refused"]


def store_action(
    path: str | Path | StoreLocation, layout: StoreLayout, *, overwrite: bool = False
) -> tuple[StoreAction, StoreMismatchError | None]:
    """What :func:`create_or_resume` will do with ``path``, found by its own checks, read only.

    ``new`` (nothing there), ``replace`` (``overwrite``, or a store that never finished a
    step), ``resume``, or ``refused`` with the error the real run raises.
    """
    location = StoreLocation.parse(path)
    if not location.exists():
        return "new", None
    never_finished = (_never_finished(location.path) if location.is_local
                      else not _has_done(location))
    if overwrite or never_finished:
        return "replace", None
    try:
        _check_resumable(location if not location.is_local else location.path, layout)
    except StoreMismatchError as err:
        return "refused", err
    return "resume", None


def source_paths(layout: StoreLayout) -> list[Path]:
    """The local checkpoint folder a layout was made from (never deleted), if any."""
    source = Path(layout.source)
    return [source] if source.is_absolute() and source.exists() else []


def _never_finished(path: Path) -> bool:
    """An flq-audit store whose creation was cut short (no ``done`` array: no finished step)."""
    if is_unfinished_build(path):
        return True
    if not is_flq_store(path):
        return False
    try:
        return DONE not in zarr.open_group(str(path), mode="r")
    except Exception:  # unreadable: never deleted on a guess; the resume check reports it
        return False


def _create(path: Path, building: Path, layout: StoreLayout, version: str) -> None:
    building.mkdir(parents=True)
    inner = building / path.name
    try:
        (building / CREATING_MARKER).write_text(json.dumps({"store": path.name}))
        write_template(str(inner), layout, version=version)
        fault_point("store-create")  # the template is written, not yet in place
        os.rename(inner, path)
    except (OSError, FlqAuditError):
        raise
    except Exception as err:
        raise StoreError(f"cannot create store {str(path)!r} ({err})", path=path) from err
    finally:
        shutil.rmtree(building, ignore_errors=True)
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _check_resumable(store: Path | StoreLocation, layout: StoreLayout) -> list[int]:
    """Refuse a store this audit cannot join; return its steps."""
    location = StoreLocation.parse(store)
    path = location.display
    if location.is_local:
        attrs = root_attributes(location.path) if is_flq_store(location.path) else None
    else:
        from flq_audit.store import root_metadata

        meta = root_metadata(location)
        attrs = None if meta is None else (meta.get("attributes") or {})
        if attrs is not None and "flq-audit" not in str(attrs.get("Conventions", "")):
            attrs = None
    if attrs is None:
        raise StoreMismatchError(
            f"{path!r} exists and is not an flq-audit store (no zarr.json saying so)",
            path=path, hint="Choose another --out.")
    try:
        group = open_fresh(location, mode="r")
        steps = [int(s) for s in np.asarray(zarr_array(group, "step")[:])]
    except Exception as err:
        raise StoreMismatchError(
            f"store {path!r} cannot be read ({type(err).__name__}: {err})", path=path,
            hint="Choose another --out.") from err
    diffs = fingerprint_differences(attrs, layout.fingerprint())
    if diffs:
        raise StoreMismatchError(
            f"store {path!r} was made by a different audit:\n  " + "\n  ".join(diffs),
            path=path, hint=NEW_OUT_HINT,
        )
    refuse_unplaceable(location, steps, layout.written)
    return steps


def steps_to_append(path: str | Path | StoreLocation, layout: StoreLayout) -> list[int]:
    """The steps an audit of ``layout`` appends to the existing store at ``path`` (read only;
    empty when the store is missing, refused or holds them all)."""
    location = StoreLocation.parse(path)
    try:
        return appendable(stored_steps(location), layout)
    except Exception:  # a missing or unreadable store: the run reports it
        return []


__all__ = ["create_or_resume", "source_paths", "steps_to_append", "store_action"]
