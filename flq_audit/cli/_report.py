"""``flq-audit report``: per-layer summary table, verdict and figures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.table import Table

from flq_audit import api
from flq_audit.cli import _output
from flq_audit.cli._errors import mapped
from flq_audit.cli._options import JsonOpt, StoreArg
from flq_audit.report import nonfinite_lines, report_groups, sequential_verdict, write_report
from flq_audit.store._safety import REPORT_MARKER, check_report_folder


@mapped
def report_command(
    store: StoreArg,
    out: Annotated[Path | None, typer.Option(
        help="Folder for the figures, index.html and metrics.nc. "
             "Default: beside the store, <store>-report/")] = None,
    output_format: _output.FormatOpt = "table",
    as_json: JsonOpt = False,
) -> None:
    """Per-layer table (TL first/last, t90, surrogate, alignment, NC1), a verdict, figures.

    Also writes DIR/metrics.nc (the NetCDF export) and DIR/index.html, one self-contained page
    with the verdict, the table, the figures, the provenance and a link to metrics.nc.

    Computes (and stores, like `metrics`) every registered metric group that is not stored
    yet; refuses a store holding a group whose computation was interrupted.

    With --format tsv, csv or json the per-layer table goes to stdout in that format and the
    verdict and figure paths to stderr.

    Example: flq-audit report run.zarr --out run-report
    """
    from flq_audit.metrics import require_complete  # dask.array: only when computing

    fmt = _output.output_format(output_format, as_json)
    folder = out or Path(str(store).rstrip("/").removesuffix(".zarr") + "-report")
    check_report_folder(folder)
    ds = api.open_store(store)
    require_complete(ds, store)
    metrics = api.compute_metrics(store, metrics=report_groups())
    if fmt == "table":
        _output.stdout.print(layer_table(metrics))
    elif fmt != "json":
        _output.write_rows(LAYER_COLUMNS, layer_rows(metrics), fmt)
    notes = _output.stdout if fmt == "table" else _output.stderr
    for line in nonfinite_lines(ds):
        notes.print(line)
    last = metrics["depth_spearman"].dropna("step")
    rho = float(last.values[-1]) if last.size else float("nan")
    verdict = sequential_verdict(metrics["t90"], rho)
    notes.print(verdict)
    figures = write_report(metrics, folder)
    for path in figures:
        notes.print(f"figure  {path}")
    netcdf = api.export(store, folder / "metrics.nc")
    from flq_audit.report_html import write_page

    page = write_page(folder, metrics=metrics, store=api.open_store(store), verdict=verdict,
                      figures=figures, netcdf=netcdf, notes=nonfinite_lines(ds))
    notes.print(f"netcdf  {netcdf}")
    notes.print(f"page    {page}")
    (folder / REPORT_MARKER).touch()
    if fmt == "json":
        _output.print_json({"layers": [dict(zip(LAYER_COLUMNS, (_output.json_value(v) for v in row),
                                                strict=True)) for row in layer_rows(metrics)],
                            "verdict": verdict, "figures": [str(p) for p in figures],
                            "netcdf": str(netcdf), "page": str(page)})


def layer_table(metrics) -> Table:
    """One row per layer: TL at the first and last done step, t90, surrogate, alignment, NC1."""
    tl = metrics["target_linearity"].dropna("step", how="all")
    table = Table(title="per layer")
    for column in ("layer", "TL first", "TL last", "t90", "surrogate last", "alignment last",
                   "NC1 last"):
        table.add_column(column, justify="right" if column != "layer" else "left")
    for layer in tl["layer"].values:
        row = [str(layer), _f(tl.sel(layer=layer).values[0]), _f(tl.sel(layer=layer).values[-1]),
               _f(metrics["t90"].sel(layer=layer).item(), "{:.0f}")]
        for name in ("surrogate", "alignment", "nc1"):
            values = metrics[name].sel(layer=layer).dropna("step").values if name in metrics else []
            row.append(_f(values[-1], "{:.3g}") if len(values) else "—")
        table.add_row(*row)
    return table


LAYER_COLUMNS = ("layer", "tl_first", "tl_last", "t90", "surrogate_last", "alignment_last",
                 "nc1_last")


def layer_rows(metrics) -> list[tuple]:
    """The per-layer table's values unrounded (NaN where a metric is missing), one per layer."""
    tl = metrics["target_linearity"].dropna("step", how="all")
    rows = []
    for layer in tl["layer"].values:
        values = tl.sel(layer=layer).values
        row = [str(layer), float(values[0]), float(values[-1]),
               float(metrics["t90"].sel(layer=layer).item())]
        for name in ("surrogate", "alignment", "nc1"):
            kept = metrics[name].sel(layer=layer).dropna("step").values if name in metrics else []
            row.append(float(kept[-1]) if len(kept) else float("nan"))
        rows.append(tuple(row))
    return rows


def _f(value: float, fmt: str = "{:.3f}") -> str:
    return fmt.format(value) if np.isfinite(value) else "—"
