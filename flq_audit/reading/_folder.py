"""The report folder: figures, ``metrics.nc`` and ``index.html`` of a store whose metrics are
computed, and what the report says, as one record (:func:`flq_audit.api.report` makes it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from flq_audit.reading._report import (
    LAYER_FIELDS,
    findings,
    layer_values,
    nonfinite_lines,
    sequential_verdict,
    write_report,
)

if TYPE_CHECKING:
    from flq_audit.store import StoreLocation

#: The NetCDF export's name inside a report folder.
NETCDF_NAME = "metrics.nc"


@dataclass(frozen=True)
class Report:
    """What ``flq-audit report`` writes and says about one store."""

    folder: Path
    metrics: xr.Dataset
    #: One row per layer, unrounded (:data:`~flq_audit.reading.LAYER_FIELDS`).
    layers: list[tuple[Any, ...]]
    verdict: str
    #: What the data says, one sentence a line (:func:`~flq_audit.reading.findings`).
    findings: list[str]
    #: The (step, layer) entries left out of every metric (non-finite weights or activations).
    notes: list[str]
    figures: list[Path]
    netcdf: Path
    page: Path

    def layer_dicts(self) -> list[dict[str, Any]]:
        """:attr:`layers` as one mapping of :data:`~flq_audit.reading.LAYER_FIELDS` a layer."""
        return [dict(zip(LAYER_FIELDS, row, strict=True)) for row in self.layers]


def default_folder(location: StoreLocation) -> Path:
    """``<store>-report`` beside a local store, ``./<name>-report`` for a URL store."""
    base = location.display if location.is_local else location.name
    return Path(base.rstrip("/").removesuffix(".zarr") + "-report")


def prepare_folder(location: StoreLocation, out: str | Path | None) -> Path:
    """The report folder (``out``, else :func:`default_folder`), refused before anything is
    computed when it is a store, lies inside one or holds files a report did not write
    (:class:`~flq_audit.errors.UnsafeDeletionError`), or when the store holds a metric group
    whose computation was interrupted (:class:`~flq_audit.errors.MetricError`)."""
    from flq_audit.metrics import require_complete  # dask.array: only when computing
    from flq_audit.store import check_report_folder, open_dataset

    folder = Path(out) if out is not None else default_folder(location)
    check_report_folder(folder)
    require_complete(open_dataset(location), location.display)
    return folder


def audited_steps(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` at the steps an audit wrote or tried (done, or failed with an error): a store
    lays out every listed step, and the report leaves out those never audited."""
    tried = ds["done"].values.astype(bool)
    if "error" in ds:
        tried |= np.asarray([bool(str(e)) for e in ds["error"].values])
    return ds.isel(step=np.flatnonzero(tried)) if not tried.all() else ds


def write_folder(location: StoreLocation, folder: Path, metrics: xr.Dataset) -> Report:
    """Write the figures, the NetCDF export and the page of a store whose report metrics are
    computed (``metrics``); mark the folder as a report's last, so a rerun may replace it."""
    from flq_audit.reading._export import to_netcdf
    from flq_audit.reading._html import write_page
    from flq_audit.store import open_dataset
    from flq_audit.store._safety import REPORT_MARKER

    store = audited_steps(open_dataset(location))
    if "step" in metrics.dims:
        metrics = metrics.sel(step=store["step"].values)
    notes = nonfinite_lines(store)
    verdict = sequential_verdict(metrics)
    said = findings(metrics, store)
    figures = write_report(metrics, folder, store)
    netcdf = to_netcdf(store, folder / NETCDF_NAME)
    page = write_page(folder, metrics=metrics, store=store, verdict=verdict, figures=figures,
                      netcdf=netcdf, notes=notes, findings=said)
    (folder / REPORT_MARKER).touch()
    return Report(folder=folder, metrics=metrics, layers=layer_values(metrics), verdict=verdict,
                  findings=said, notes=notes, figures=figures, netcdf=netcdf, page=page)


__all__ = ["NETCDF_NAME", "Report", "default_folder", "prepare_folder", "write_folder"]
