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
from flq_audit.cli._options import StoreArg
from flq_audit.report import nonfinite_lines, report_groups, sequential_verdict, write_report
from flq_audit.store._safety import REPORT_MARKER, check_report_folder


@mapped
def report_command(
    store: StoreArg,
    out: Annotated[Path | None, typer.Option(
        help="Folder for the figures, index.html and metrics.nc. "
             "Default: beside the store, <store>-report/")] = None,
) -> None:
    """Per-layer table (TL first/last, t90, surrogate, alignment, NC1), a verdict, figures.

    Also writes DIR/metrics.nc (the NetCDF export) and DIR/index.html, one self-contained page
    with the verdict, the table, the figures, the provenance and a link to metrics.nc.

    Computes (and stores, like `metrics`) every registered metric group that is not stored
    yet; refuses a store holding a group whose computation was interrupted.

    Example: flq-audit report run.zarr --out run-report
    """
    from flq_audit.metrics import require_complete  # dask.array: only when computing

    folder = out or Path(str(store).rstrip("/").removesuffix(".zarr") + "-report")
    check_report_folder(folder)
    ds = api.open_store(store)
    require_complete(ds, store)
    metrics = api.compute_metrics(store, metrics=report_groups())
    _output.stdout.print(layer_table(metrics))
    for line in nonfinite_lines(ds):
        _output.stdout.print(line)
    last = metrics["depth_spearman"].dropna("step")
    rho = float(last.values[-1]) if last.size else float("nan")
    verdict = sequential_verdict(metrics["t90"], rho)
    _output.stdout.print(verdict)
    figures = write_report(metrics, folder)
    for path in figures:
        _output.stdout.print(f"figure  {path}")
    netcdf = api.export(store, folder / "metrics.nc")
    from flq_audit.report_html import write_page

    page = write_page(folder, metrics=metrics, store=api.open_store(store), verdict=verdict,
                      figures=figures, netcdf=netcdf, notes=nonfinite_lines(ds))
    _output.stdout.print(f"netcdf  {netcdf}")
    _output.stdout.print(f"page    {page}")
    (folder / REPORT_MARKER).touch()


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


def _f(value: float, fmt: str = "{:.3f}") -> str:
    return fmt.format(value) if np.isfinite(value) else "—"
