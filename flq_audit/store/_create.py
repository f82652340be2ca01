"""Create a store atomically, or check that an existing one can be resumed by this run.

A new store is built inside a hidden sibling folder (``.NAME.flq-creating``, which holds a
creation marker) and renamed into place only once its template is complete, so ``STORE`` either does not
exist or is a whole store. A build left by a killed process holds no finished step: the next
run (which holds the store's lock, so the builder is gone) deletes it and builds again.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Literal

import numpy as np
import zarr

from flq_audit._faults import fault_point
from flq_audit.errors import FlqAuditError, StoreError, StoreMismatchError
from flq_audit.store._safety import (
    CREATING_MARKER,
    building_path,
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
    path: str | Path, layout: StoreLayout, *, overwrite: bool = False, version: str
) -> StepWriter:
    """Write the template (or check an existing store fits) and return a writer.

    Call it while holding :func:`~flq_audit.store.store_lock`.

    Raises
    ------
    UnsafeDeletionError
        ``overwrite`` names something that is not an flq-audit store, or the source.
    StoreMismatchError
        The store exists and was made from another source, probe, layer set or config, or
        lacks some of the selected steps.
    """
    path = Path(path)
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
    return StepWriter(path, layout)


StoreAction = Literal["new", "resume", "replace", "refused"]


def store_action(
    path: str | Path, layout: StoreLayout, *, overwrite: bool = False
) -> tuple[StoreAction, StoreMismatchError | None]:
    """What :func:`create_or_resume` will do with ``path``, found by its own checks, read only.

    ``new`` (nothing there), ``replace`` (``overwrite``, or a store that never finished a
    step), ``resume``, or ``refused`` with the error the real run raises.
    """
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return "new", None
    if overwrite or _never_finished(path):
        return "replace", None
    try:
        _check_resumable(path, layout)
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


def _check_resumable(path: Path, layout: StoreLayout) -> None:
    if not is_flq_store(path):
        raise StoreMismatchError(
            f"{str(path)!r} exists and is not an flq-audit store (no zarr.json saying so)",
            path=path, hint="Choose another --out.")
    attrs = root_attributes(path) or {}
    try:
        steps = [int(s) for s in np.asarray(zarr_array(zarr.open_group(str(path), mode="r"),
                                                       "step")[:])]
    except Exception as err:
        raise StoreMismatchError(
            f"store {str(path)!r} cannot be read ({type(err).__name__}: {err})", path=path,
            hint="Choose another --out.") from err
    diffs = fingerprint_differences(attrs, layout.fingerprint())
    missing = sorted(set(layout.steps) - set(steps))
    if missing:
        diffs.append(f"steps: the store lacks selected step(s) {missing}")
    if diffs:
        raise StoreMismatchError(
            f"store {str(path)!r} was made by a different audit:\n  " + "\n  ".join(diffs),
            path=path, hint=NEW_OUT_HINT,
        )


__all__ = ["create_or_resume", "source_paths", "store_action"]
