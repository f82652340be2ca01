"""The audit store: a chunked Zarr (format 3) Dataset indexed by ``step`` and ``layer``."""

from __future__ import annotations

import importlib
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import xarray as xr

from flq_audit.errors import StoreError, StoreNotFoundError
from flq_audit.store._lock import lock_path, store_lock
from flq_audit.store._records import LayerInfo, ProbeSummary, VariableSpec
from flq_audit.store._safety import (
    check_export_target,
    check_removable,
    check_report_folder,
    is_flq_store,
    remove_store,
)
from flq_audit.store._schema import (
    ACTIVATIONS,
    DONE,
    ERROR,
    GRAM,
    TARGETS,
    StoreLayout,
    fixed_width_strings_allowed,
    plain_string_coordinates,
)

if TYPE_CHECKING:
    from flq_audit.store._create import create_or_resume, source_paths, store_action
    from flq_audit.store._writer import StepWriter

#: The write side (zarr, numcodecs, fsspec), imported on first use: `--help` needs none of it.
_WRITE_SIDE = {
    "create_or_resume": "flq_audit.store._create",
    "source_paths": "flq_audit.store._create",
    "store_action": "flq_audit.store._create",
    "StepWriter": "flq_audit.store._writer",
}


def __getattr__(name: str) -> object:
    if name in _WRITE_SIDE:
        return getattr(importlib.import_module(_WRITE_SIDE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def consolidate(path: str | Path) -> None:
    """Consolidate metadata once, after the writes (v3 calls this experimental; it warns)."""
    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(path))


def is_consolidated(path: str | Path) -> bool:
    meta = Path(path) / "zarr.json"
    try:
        return json.loads(meta.read_text()).get("consolidated_metadata") is not None
    except (OSError, ValueError):
        return False


def open_dataset(path: str | Path, *, dask: bool = True) -> xr.Dataset:
    """Open a store lazily: dask arrays with the stored chunks, or with ``dask=False`` xarray's
    lazily indexed arrays (each read loads only what it selects, without importing dask)."""
    path = Path(path)
    if not path.exists():
        raise StoreNotFoundError(f"store {str(path)!r} does not exist", path=path,
                                 hint="Run `flq-audit SOURCE --out STORE` first.")
    if not (path / "zarr.json").is_file():
        raise StoreError(
            f"{str(path)!r} is not a Zarr store (no zarr.json)", path=path,
            hint="Run `flq-audit SOURCE --out STORE` first.",
        )
    if not is_flq_store(path):
        raise StoreError(f"{str(path)!r} is a Zarr store but not an flq-audit store", path=path,
                         hint="Give the folder that `flq-audit SOURCE --out STORE` wrote.")
    with warnings.catch_warnings(), fixed_width_strings_allowed():
        warnings.simplefilter("ignore", category=UserWarning)
        try:
            ds = xr.open_zarr(str(path), consolidated=is_consolidated(path), zarr_format=3,
                              chunks={} if dask else None)
        except Exception as err:
            raise StoreError(f"cannot open store {str(path)!r} ({err})", path=path) from err
    if GRAM not in ds or DONE not in ds:
        raise StoreError(f"{str(path)!r} is a Zarr store but not an flq-audit store", path=path)
    return plain_string_coordinates(ds)


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
    "check_export_target",
    "check_removable",
    "check_report_folder",
    "consolidate",
    "create_or_resume",
    "fixed_width_strings_allowed",
    "is_consolidated",
    "is_flq_store",
    "lock_path",
    "open_dataset",
    "remove_store",
    "source_paths",
    "store_action",
    "store_lock",
]
