"""Export a store to NetCDF4 (explicit engine, CF strings and flags)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Final

import numpy as np
import xarray as xr

from flq_audit._faults import fault_point
from flq_audit.errors import ExportError
from flq_audit.store._safety import check_export_target

NETCDF_ENGINE: Final = "h5netcdf"
_BOOKKEEPING = ("done", "error", "sha256", "files")


def metric_variables(ds: xr.Dataset) -> list[str]:
    """Persisted metric variables (tagged with a ``flq_metric`` attribute)."""
    return [str(name) for name, var in ds.data_vars.items() if "flq_metric" in var.attrs]


def to_netcdf(
    ds: xr.Dataset, out: str | Path, *, with_activations: bool = False, with_grams: bool = False
) -> Path:
    """Write metrics, coordinates and bookkeeping (optionally activations/Grams) to NetCDF4.

    Attributes are reduced to strings and numbers (NetCDF rejects dicts, None and bools);
    float16 is cast to float32 (NetCDF has no half precision). The file is written beside
    ``out`` and renamed into place, so an interrupted export leaves no partial ``out``. A
    target that is a folder, a store or inside one, or a file that is not NetCDF, is refused.
    """
    from flq_audit.metrics import require_complete  # dask.array: not on the `show` path

    out = Path(out)
    check_export_target(out)
    require_complete(ds, ds.encoding.get("source", "STORE"))
    names = metric_variables(ds) + [v for v in _BOOKKEEPING if v in ds]
    if "targets" in ds:
        names.append("targets")
    if with_activations:
        names.append("activations")
    if with_grams:
        from flq_audit._gram_forms import GRAM_VARIABLES

        names += [name for name in GRAM_VARIABLES if name in ds]
    subset = ds[names]
    subset = subset.assign_attrs(_clean_attrs(ds.attrs))
    _flag_stale(subset, ds)
    return write_netcdf(subset, out)


def write_netcdf(subset: xr.Dataset, out: Path) -> Path:
    """Write ``subset`` as CF NetCDF4: attributes reduced to strings and numbers, flags as
    int8 with their meanings, strings as character arrays, float16 as float32; written
    beside ``out`` and renamed into place."""
    subset = subset.assign_attrs(_clean_attrs(subset.attrs))
    for name in list(subset.variables):
        var = subset[name]
        if var.dtype == np.float16:
            subset[name] = var.astype(np.float32)
        if var.dtype == bool:
            subset[name] = var.astype(np.int8)
        subset[name].attrs = _clean_attrs(var.attrs)
        subset[name].encoding = {}
        if var.dtype == bool:  # CF: flag_values of the variable's own type, with meanings
            subset[name].attrs.update(flag_values=np.array([0, 1], dtype=np.int8),
                                      flag_meanings="false true")
        if var.dtype == object or var.dtype.kind in "TU":
            subset[name] = _char_array(subset[name])
    partial = out.parent / f".{out.name}.partial"
    try:
        subset.to_netcdf(partial, engine=NETCDF_ENGINE, format="NETCDF4")
        fault_point("export")  # the NetCDF file is written under its temporary name
        os.replace(partial, out)
    except OSError:
        partial.unlink(missing_ok=True)
        raise
    except Exception as err:
        partial.unlink(missing_ok=True)
        raise ExportError(f"cannot write NetCDF {str(out)!r} ({err})", path=out) from err
    return out


def _flag_stale(subset: xr.Dataset, ds: xr.Dataset) -> None:
    """Metric variables of a stale group carry ``flq_state="stale"`` and the number of done
    steps they were computed on: an export never passes them off as current."""
    from flq_audit._stamps import TAG_ATTR, stale_groups

    stale = stale_groups(ds)
    for name, var in subset.data_vars.items():
        counts = stale.get(str(var.attrs.get(TAG_ATTR)))
        if counts is not None:
            subset[name].attrs.update(flq_state="stale", flq_computed_on_steps=counts[0])


def _char_array(var: xr.DataArray) -> xr.DataArray:
    """Strings as CF character arrays (UTF-8 bytes along a ``string<N>`` dimension): the
    CF conventions know no variable-length string type."""
    strings = np.asarray([str(v) for v in np.ravel(var.values)], dtype=object)
    out = var.copy(data=strings.reshape(var.shape))
    out.encoding = {"dtype": "S1"}
    return out


#: An attribute value that NetCDF stores as it is.
NetCDFAttr = str | int | float | np.integer | np.floating


def _clean_attrs(attrs: dict) -> dict[str, NetCDFAttr]:
    clean: dict[str, NetCDFAttr] = {}
    for key, value in attrs.items():
        if isinstance(value, bool | np.bool_):
            clean[key] = int(value)
        elif isinstance(value, str | int | float | np.integer | np.floating):
            clean[key] = value
        elif value is None:
            clean[key] = ""
        else:
            clean[key] = json.dumps(value, default=str)
    return clean


__all__ = ["NETCDF_ENGINE", "NetCDFAttr", "metric_variables", "to_netcdf", "write_netcdf"]
