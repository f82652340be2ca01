"""``flq-audit report``: per-layer summary table, verdict and figures."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from flq_audit import api
from flq_audit.cli import _output
from flq_audit.cli._errors import mapped
from flq_audit.cli._options import JsonOpt, StorageOptionsOpt, StoreArg

if TYPE_CHECKING:
    import xarray as xr


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
    fmt = _output.output_format(output_format.value, as_json)
    said = api.report(store, out, storage_options=storage_options)
    if fmt == "table":
        _output.stdout.print(layer_table(said.metrics))
    elif fmt != "json":
        from flq_audit.reading import LAYER_FIELDS

        _output.write_rows(LAYER_FIELDS, said.layers, fmt)
    notes = _output.stdout if fmt == "table" else _output.stderr
    for line in [*said.notes, said.verdict, *said.findings]:
        notes.print(line)
    for path in said.figures:
        notes.print(f"figure  {path}")
    notes.print(f"netcdf  {said.netcdf}")
    notes.print(f"page    {said.page}")
    if fmt == "json":
        _output.print_json({"layers": [{k: _output.json_value(v) for k, v in row.items()}
                                       for row in said.layer_dicts()],
                            "verdict": said.verdict, "findings": said.findings,
                            "figures": [str(p) for p in said.figures],
                            "netcdf": str(said.netcdf), "page": str(said.page)})


def layer_table(metrics: xr.Dataset) -> Table:
    """One row per layer: TL at the first and last done step, its chance floor at the last
    (marked where TL is at or near it), t90, surrogate, alignment, NC1."""
    from flq_audit.reading import LAYER_COLUMNS, layer_rows

    table = Table(title="per layer")
    for column in LAYER_COLUMNS:
        table.add_column(column, justify="right" if column != "layer" else "left")
    for row in layer_rows(metrics):
        table.add_row(*row)
    return table
