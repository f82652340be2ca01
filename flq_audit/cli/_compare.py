"""``flq-audit compare``: runs side by side, a verdict per run, NetCDF and a report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from flq_audit import api
from flq_audit.cli import _output
from flq_audit.cli._errors import mapped
from flq_audit.cli._options import JsonOpt, StorageOptionsOpt


@mapped
def compare_command(
    stores: Annotated[list[str], typer.Argument(
        metavar="STORE...", help="Two or more stores written by `flq-audit SOURCE` (local "
        "paths or fsspec URLs), one run each.")],
    name: Annotated[list[str] | None, typer.Option(
        "--name", metavar="NAME", help="A name per run (repeatable, in the order of the "
        "stores). Default: each store's file name without .zarr.")] = None,
    by: Annotated[str | None, typer.Option(
        "--by", metavar="ATTR", help="Order and colour the runs by this run attribute: a "
        "--tag given at audit time (weight_decay, seed ...).")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Write the combined metrics (dimensions run, step, layer) to this "
        "NetCDF4 file.")] = None,
    report: Annotated[Path | None, typer.Option(
        "--report", metavar="DIR", help="Write the figures, verdicts.md, metrics.nc and "
        "index.html into this folder.")] = None,
    align: Annotated[str, typer.Option(
        "--align", help="Match layers by name (default; a run lacking a layer reads NaN "
        "there) or by relative depth (depth: for networks of different depths).")] = "name",
    across_probes: Annotated[bool, typer.Option(
        "--across-probes", help="Allow runs audited on different probes (TL is then "
        "measured on different samples).")] = False,
    no_compute: Annotated[bool, typer.Option(
        "--no-compute", help="Refuse, naming them, instead of computing the metric groups "
        "a store lacks.")] = False,
    as_json: JsonOpt = False,
    storage_options: StorageOptionsOpt = None,
) -> None:
    """Set runs side by side: TL per layer and step per run, a verdict per run.

    Computes (and stores) the metric groups a store lacks, unless --no-compute. Prints one
    row per run: its last step, whether sequential linearization is observed, ρ(depth, TL)
    at the last step, whether t90 rises with depth, and its deepest layer's last TL.

    Example: flq-audit compare runs/*.zarr --by weight_decay --out cmp.nc --report cmp/
    """
    if align not in ("name", "depth"):
        raise typer.BadParameter(f"expected name or depth, got {align!r}",
                                 param_hint="--align")
    result = api.compare(stores, names=name, by=by, out=out, report=report,
                         compute=not no_compute, align=align,  # type: ignore[arg-type]  # checked above
                         across_probes=across_probes, storage_options=storage_options)
    if as_json:
        _output.print_json(_output.json_value(result.to_dict()))
        return
    from flq_audit.reading._compare_page import VERDICT_COLUMNS, summary_line, verdict_rows

    table = Table(title=f"{len(result.verdicts)} runs" + (f" by {by}" if by else ""))
    for column in VERDICT_COLUMNS:
        table.add_column(by if column == "by" and by else column,
                         justify="left" if column in ("run", "deepest layer") else "right")
    for row in verdict_rows(result.verdicts):
        table.add_row(*row)
    _output.stdout.print(table)
    _output.stdout.print(summary_line(result))
    for store, groups in result.computed.items():
        _output.stdout.print(f"computed {', '.join(groups)} in {store}")
    if result.netcdf is not None:
        _output.stdout.print(f"netcdf  {result.netcdf}")
    if result.folder is not None:
        _output.stdout.print(f"report  {result.folder}")
