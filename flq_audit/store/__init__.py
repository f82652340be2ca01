"""The audit store: a chunked Zarr (format 3) Dataset indexed by ``step`` and ``layer``."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import xarray as xr
import zarr

from flq_audit.errors import StoreError, StoreLockedError, StoreMismatchError, StoreNotFoundError
from flq_audit.store._records import LayerInfo, ProbeSummary, VariableSpec
from flq_audit.store._schema import (
    ACTIVATIONS,
    DONE,
    ERROR,
    GRAM,
    TARGETS,
    StoreLayout,
    encoding,
    fingerprint_differences,
    template,
)
from flq_audit.store._writer import StepWriter


def create_or_resume(
    path: str | Path, layout: StoreLayout, *, overwrite: bool = False, version: str
) -> StepWriter:
    """Write the template (or check an existing store fits) and return a writer.

    Raises
    ------
    StoreMismatchError
        The store exists and was made from another source, probe, layer set or config, or
        lacks some of the selected steps.
    """
    path = Path(path)
    if path.exists() and overwrite:
        shutil.rmtree(path)
    if path.exists():
        _check_resumable(path, layout)
    else:
        ds = template(layout, version=version)
        try:
            ds.to_zarr(
                str(path), mode="w-", compute=False, zarr_format=3, consolidated=False,
                encoding=encoding(layout),
            )
        except Exception as err:
            raise StoreError(f"cannot create store {str(path)!r} ({err})", path=path) from err
    return StepWriter(path, layout)


def _check_resumable(path: Path, layout: StoreLayout) -> None:
    try:
        group = zarr.open_group(str(path), mode="r")
        attrs = dict(group.attrs)
        steps = [int(s) for s in group["step"][:]]
    except Exception as err:
        raise StoreMismatchError(
            f"{str(path)!r} exists but is not an flq-audit store ({err})", path=path,
            hint="Choose another --out, or pass --overwrite to replace it.",
        ) from err
    diffs = fingerprint_differences(attrs, layout.fingerprint())
    missing = sorted(set(layout.steps) - set(steps))
    if missing:
        diffs.append(f"steps: the store lacks selected step(s) {missing[:10]}")
    if diffs:
        raise StoreMismatchError(
            f"store {str(path)!r} was made by a different audit: " + "; ".join(diffs),
            path=path, hint="Choose another --out, or pass --overwrite to replace it.",
        )


@contextmanager
def store_lock(path: str | Path) -> Iterator[None]:
    """Hold ``STORE.lock`` while writing; a lock left by a dead process is taken over."""
    lock = Path(str(path).rstrip("/") + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pid = _read_pid(lock)
            if pid is not None and _alive(pid):
                raise StoreLockedError(
                    f"store {str(path)!r} is being written by process {pid} (lock {str(lock)!r})",
                    path=path, hint="Wait for it to finish, or remove the lock if it is stale.",
                ) from None
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(str(os.getpid()))
        break
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _read_pid(lock: Path) -> int | None:
    try:
        return int(lock.read_text().strip() or "0") or None
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def consolidate(path: str | Path) -> None:
    """Consolidate metadata once, after the writes (v3 calls this experimental; it warns)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(path))


def is_consolidated(path: str | Path) -> bool:
    meta = Path(path) / "zarr.json"
    try:
        return json.loads(meta.read_text()).get("consolidated_metadata") is not None
    except (OSError, ValueError):
        return False


def open_dataset(path: str | Path) -> xr.Dataset:
    """Open a store lazily (dask arrays with the stored chunks)."""
    path = Path(path)
    if not path.exists():
        raise StoreNotFoundError(f"store {str(path)!r} does not exist", path=path,
                                 hint="Run `flq-audit SOURCE --out STORE` first.")
    if not (path / "zarr.json").is_file():
        raise StoreError(
            f"{str(path)!r} is not a Zarr store (no zarr.json)", path=path,
            hint="Run `flq-audit SOURCE --out STORE` first.",
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        try:
            ds = xr.open_zarr(str(path), consolidated=is_consolidated(path), zarr_format=3)
        except Exception as err:
            raise StoreError(f"cannot open store {str(path)!r} ({err})", path=path) from err
    if GRAM not in ds or DONE not in ds:
        raise StoreError(f"{str(path)!r} is a Zarr store but not an flq-audit store", path=path)
    return ds


__all__ = [
    "ACTIVATIONS",
    "DONE",
    "ERROR",
    "GRAM",
    "TARGETS",
    "LayerInfo",
    "ProbeSummary",
    "StepWriter",
    "StoreLayout",
    "VariableSpec",
    "consolidate",
    "create_or_resume",
    "is_consolidated",
    "open_dataset",
    "store_lock",
]
