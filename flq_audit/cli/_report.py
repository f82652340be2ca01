"""``flq-audit report``: per-layer summary table, verdict and figures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import xarray as xr
from rich.table import Table

from flq_audit import api
from flq_audit.cli import _output
from flq_audit.cli._errors import mapped
from flq_audit.cli._options import JsonOpt, StorageOptionsOpt, StoreArg
from flq_audit.report import (
    LAYER_COLUMNS,
    LAYER_FIELDS,
    findings,
    layer_rows,
    layer_values,
    nonfinite_lines,
    report_groups,
    sequential_verdict,
    write_report,
)
from flq_audit.store._safety import REPORT_MARKER, check_report_folder


@mapped
def report_command(
    store: StoreArg,
    out: Annotated[Path | None, typer.Option(
        help="Folder for the figures, index.html and metrics.nc. "
             "Default: beside the store, <store>-report/ (for a URL store: "
             "./<name>-report/).")] = None,
    output_format: _output.FormatOpt = _output.FormatChoice.table,
    as_json: JsonOpt = False,
    storage_options: StorageOptionsOpt = None,
) -> None:
    """Per-layer table (TL first/last, t90, surrogate, alignment, NC1), a verdict, what the
    data says (over which steps the depth order holds, t50/t90 per layer, whether the FL
    checkpoints were plain SGD steps, TL values that depend on the rank cut-off), figures.

    Also writes DIR/metrics.nc (the NetCDF export) and DIR/index.html, one self-contained page
    with the verdict, the table, the figures, the provenance and a link to metrics.nc.

    Computes (and stores, like `metrics`) every registered metric group that is not stored
    yet; refuses a store holding a group whose computation was interrupted.

    With --format tsv, csv or json the per-layer table goes to stdout in that format and the
    verdict and figure paths to stderr.

    Example: flq-audit report run.zarr --out run-report
    """
    from flq_audit.metrics import require_complete  # dask.array: only when computing
    from flq_audit.store import StoreLocation

    fmt = _output.output_format(output_format.value, as_json)
    location = StoreLocation.parse(store, storage_options)
    local_base = store if location.is_local else location.name
    folder = out or Path(str(local_base).rstrip("/").removesuffix(".zarr") + "-report")
    check_report_folder(folder)
    ds = api.open_store(location)
    require_complete(ds, store)
    metrics = api.compute_metrics(location, metrics=report_groups())
    if fmt == "table":
        _output.stdout.print(layer_table(metrics))
    elif fmt != "json":
        _output.write_rows(LAYER_FIELDS, layer_values(metrics), fmt)
    notes = _output.stdout if fmt == "table" else _output.stderr
    for line in nonfinite_lines(ds):
        notes.print(line)
    verdict = sequential_verdict(metrics)
    notes.print(verdict)
    said = findings(metrics, ds)
    for line in said:
        notes.print(line)
    figures = write_report(metrics, folder, ds)
    for path in figures:
        notes.print(f"figure  {path}")
    netcdf = api.export(location, folder / "metrics.nc")
    from flq_audit.report_html import write_page

    page = write_page(folder, metrics=metrics, store=api.open_store(location), verdict=verdict,
                      figures=figures, netcdf=netcdf, notes=nonfinite_lines(ds),
                      findings=said)
    notes.print(f"netcdf  {netcdf}")
    notes.print(f"page    {page}")
    (folder / REPORT_MARKER).touch()
    if fmt == "json":
        _output.print_json({"layers": [dict(zip(LAYER_FIELDS, (_output.json_value(v) for v in row),
                                                strict=True)) for row in layer_values(metrics)],
                            "verdict": verdict, "findings": said,
                            "figures": [str(p) for p in figures],
                            "netcdf": str(netcdf), "page": str(page)})


def layer_table(metrics: xr.Dataset) -> Table:
    """One row per layer: TL at the first and last done step, its chance floor at the last
    (marked where TL is at or near it), t90, surrogate, alignment, NC1."""
    table = Table(title="per layer")
    for column in LAYER_COLUMNS:
        table.add_column(column, justify="right" if column != "layer" else "left")
    for row in layer_rows(metrics):
        table.add_row(*row)
    return table
