"""The audit store: a chunked Zarr (format 3) Dataset indexed by ``step`` and ``layer``."""

from __future__ import annotations

import importlib
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from flq_audit.errors import StoreError, StoreNotFoundError
from flq_audit.store._claims import Claim, StepClaims
from flq_audit.store._grams import GRAM, GRAM_FORM
from flq_audit.store._location import StoreLocation, parse_storage_options
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
    TARGETS,
    StoreLayout,
    fixed_width_strings_allowed,
    plain_string_coordinates,
)

if TYPE_CHECKING:
    import xarray as xr

    from flq_audit.store._create import (
        create_or_resume,
        source_paths,
        steps_to_append,
        store_action,
    )
    from flq_audit.store._writer import StepWriter

#: The write side (zarr, numcodecs, fsspec), imported on first use: `--help` needs none of it.
_WRITE_SIDE = {
    "create_or_resume": "flq_audit.store._create",
    "source_paths": "flq_audit.store._create",
    "store_action": "flq_audit.store._create",
    "steps_to_append": "flq_audit.store._create",
    "StepWriter": "flq_audit.store._writer",
}


def __getattr__(name: str) -> object:
    if name in _WRITE_SIDE:
        return getattr(importlib.import_module(_WRITE_SIDE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: The ``Dataset.encoding`` key under which :func:`open_dataset` records the store's
#: :class:`StoreLocation` (its URL and storage options), beside ``source`` (its display name).
LOCATION_ENCODING = "flq_location"


def consolidate(path: str | Path | StoreLocation) -> None:
    """Consolidate metadata once, after the writes (v3 calls this experimental; it warns)."""
    import zarr

    location = StoreLocation.parse(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(location.zarr_store())


def is_consolidated(path: str | Path | StoreLocation) -> bool:
    meta = StoreLocation.parse(path).read_bytes("zarr.json")
    try:
        return meta is not None and json.loads(meta).get("consolidated_metadata") is not None
    except (OSError, ValueError, AttributeError):
        return False


def root_metadata(location: StoreLocation) -> dict | None:
    """The root ``zarr.json`` of a store when it is a Zarr group, else None."""
    try:
        data = location.read_bytes("zarr.json")
        meta = json.loads(data) if data is not None else None
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("node_type") == "group" else None


def check_flq_store(location: StoreLocation) -> None:
    """Refuse (``StoreNotFoundError`` or ``StoreError``) a location that is not an flq-audit
    store: missing, not a Zarr group, or one that flq-audit did not write."""
    shown = location.display
    if location.is_local:
        if not is_flq_store(location.path):
            _refuse_local(location.path)
        return
    meta = root_metadata(location)
    if meta is None:
        if not location.exists():
            raise StoreNotFoundError(f"store {shown!r} does not exist", path=shown,
                                     hint="Run `flq-audit SOURCE --out STORE` first.")
        raise StoreError(f"{shown!r} is not a Zarr store (no zarr.json)", path=shown,
                         hint="Run `flq-audit SOURCE --out STORE` first.")
    if "flq-audit" not in str((meta.get("attributes") or {}).get("Conventions", "")):
        raise StoreError(f"{shown!r} is a Zarr store but not an flq-audit store", path=shown,
                         hint="Give the store that `flq-audit SOURCE --out STORE` wrote.")


def open_dataset(path: str | Path | StoreLocation, *, dask: bool = True,
                 storage_options: dict | None = None) -> xr.Dataset:
    """Open a store lazily: dask arrays with the stored chunks, or with ``dask=False`` xarray's
    lazily indexed arrays (each read loads only what it selects, without importing dask).

    ``path`` is a local path, an fsspec URL (``s3://bucket/x.zarr``; ``storage_options`` go to
    fsspec) or a :class:`StoreLocation`."""
    location = StoreLocation.parse(path, storage_options)
    shown = location.display
    check_flq_store(location)
    import xarray as xr

    with warnings.catch_warnings(), fixed_width_strings_allowed():
        warnings.simplefilter("ignore", category=UserWarning)
        try:
            ds = xr.open_zarr(location.zarr_store(read_only=True),
                              consolidated=is_consolidated(location), zarr_format=3,
                              chunks={} if dask else None)
        except Exception as err:
            raise StoreError(f"cannot open store {shown!r} ({err})", path=shown) from err
    if DONE not in ds or not (GRAM_FORM in ds.coords or GRAM in ds):
        raise StoreError(f"{shown!r} is a Zarr store but not an flq-audit store", path=shown)
    ds.encoding["source"] = shown
    ds.encoding[LOCATION_ENCODING] = location  # ds.flq.summary() measures the store with it
    return plain_string_coordinates(ds)


def _refuse_local(path: Path) -> None:
    if not path.exists():
        raise StoreNotFoundError(f"store {str(path)!r} does not exist", path=path,
                                 hint="Run `flq-audit SOURCE --out STORE` first.")
    if not (path / "zarr.json").is_file():
        raise StoreError(
            f"{str(path)!r} is not a Zarr store (no zarr.json)", path=path,
            hint="Run `flq-audit SOURCE --out STORE` first.",
        )
    raise StoreError(f"{str(path)!r} is a Zarr store but not an flq-audit store", path=path,
                     hint="Give the folder that `flq-audit SOURCE --out STORE` wrote.")


__all__ = [
    "ACTIVATIONS",
    "DONE",
    "ERROR",
    "GRAM",
    "LOCATION_ENCODING",
    "TARGETS",
    "Claim",
    "LayerInfo",
    "ProbeSummary",
    "StepClaims",
    "StepWriter",
    "StoreLayout",
    "StoreLocation",
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
    "parse_storage_options",
    "remove_store",
    "root_metadata",
    "source_paths",
    "steps_to_append",
    "store_action",
    "store_lock",
]
