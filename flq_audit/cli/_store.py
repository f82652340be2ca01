"""Commands that read a store: ``metrics``, ``show``, ``export``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table

from flq_audit import api
from flq_audit._format import human_size
from flq_audit.cli import _output
from flq_audit.cli._command import complete_metric_groups
from flq_audit.cli._errors import mapped
from flq_audit.cli._options import (
    DenominatorChoice,
    DenominatorOpt,
    JsonOpt,
    StorageOptionsOpt,
    StoreArg,
)
from flq_audit.constants import DEFAULT_PCA_THRESHOLD

if TYPE_CHECKING:
    import xarray as xr

    from flq_audit.reading import StoreSummary


@mapped
def metrics_command(
    store: StoreArg,
    metric: Annotated[str, typer.Option(
        metavar="GROUPS", autocompletion=complete_metric_groups,
        help="Comma-separated metric groups (listed by --help).")] = "tl",
    pca: Annotated[int | None, typer.Option(
        min=1, help="Project layers wider than --pca-threshold onto their top Q principal "
        "directions (reference convention).")] = None,
    pca_threshold: Annotated[int, typer.Option(
        min=1, help="With --pca: only layers wider than this are projected.")
    ] = DEFAULT_PCA_THRESHOLD,
    ridge: Annotated[float, typer.Option(min=0.0, help="Ridge λ ≥ 0 of the TL fit.")] = 0.0,
    denominator: DenominatorOpt = DenominatorChoice.column,
    scheduler: Annotated[str | None, typer.Option(
        help="dask scheduler: threads (default), sync, or a dask.distributed address.")] = None,
    recompute: Annotated[bool, typer.Option(
        "--recompute", help="Recompute the groups even if they are stored and current.")] = False,
    as_json: JsonOpt = False,
    output_format: _output.FormatOpt = _output.FormatChoice.table,
    storage_options: StorageOptionsOpt = None,
) -> None:
    """Compute metrics from a store, persist them in it, print a step × layer table.

    Each group becomes visible only when complete (its stamp is written last); a group whose
    computation was interrupted is recomputed on the next run.

    Example: flq-audit metrics run.zarr --metric tl --pca 256
    """
    from flq_audit.metrics._spec import is_record  # dask: only when computing

    fmt = _output.output_format(output_format.value, as_json)
    names = [m.strip() for m in metric.split(",") if m.strip()]
    with _output.dask_progress(scheduler):
        result = api.compute_metrics(
            store, metrics=names, pca=pca, pca_threshold=pca_threshold, ridge=ridge,
            denominator=denominator.value,
            scheduler=scheduler, recompute=recompute,
            storage_options=storage_options,
        )
    tables = [v for v, var in result.data_vars.items()  # records: in --json, csv, tsv
              if var.dims == ("step", "layer") and not is_record(var.attrs)]
    if fmt in ("tsv", "csv"):
        _output.write_rows(("metric", "step", "layer", "value"), metric_rows(result), fmt)
        return
    if fmt == "json":
        _output.print_json({
            name: {
                "dims": list(var.dims),
                "coords": {d: [_plain(x) for x in result[d].values] for d in var.dims},
                "values": np.where(np.isfinite(var.values), var.values, np.array(None)).tolist(),
                "attrs": {k: v for k, v in var.attrs.items()
                          if k not in ("flq_stamp", "flq_params")},
            }
            for name, var in result.data_vars.items()
        })
        return
    for name in dict.fromkeys(tables):
        _output.stdout.print(_output.metric_table(result[name], title=f"{name} (step × layer)"))
    for name, var in result.data_vars.items():
        if var.dims == ("layer",):
            values = ", ".join(f"{layer}={_plain(v)}" for layer, v in
                               zip(var["layer"].values, var.values, strict=True))
            _output.stdout.print(f"{name}: {values}")
    floors = [str(v) for v in result.data_vars if str(v).endswith("_chance_floor")]
    if floors:
        floor = result[floors[0]].max().item()
        _output.stdout.print(f"chance floor (rank/N) at most {floor:.3f}")
    for line in undefined_lines(result, store):
        _output.stdout.print(line)


def undefined_lines(result: xr.Dataset, store: object) -> list[str]:
    """Why shown variables hold no value at all: on a store with one done step, the ones
    that compare steps (drift to the previous step, crossing times)."""
    empty = [str(v) for v, var in result.data_vars.items()
             if set(var.dims) <= {"step", "layer"} and var.size
             and not np.isfinite(np.asarray(var.values, dtype=float)).any()]
    if not empty:
        return []
    done = _steps_with_values(result)
    if len(done) == 1:
        return [f"{', '.join(empty)}: not defined on store {store} with one done step "
                f"(step {done[0]}): they compare steps; audit more steps to get them"]
    return [f"{', '.join(empty)}: no finite value at any step"]


def _steps_with_values(result: xr.Dataset) -> list[int]:
    """The steps at which any step variable holds a finite value (the done steps)."""
    if "step" not in result.dims:
        return []
    seen = np.zeros(result.sizes["step"], dtype=bool)
    for var in result.data_vars.values():
        if "step" in var.dims:
            values = np.asarray(var.transpose("step", ...).values, dtype=float)
            seen |= np.isfinite(values.reshape(values.shape[0], -1)).any(axis=1)
    return [int(s) for s, flag in zip(result["step"].values, seen, strict=True) if flag]


def metric_rows(result: xr.Dataset) -> list[tuple[str, object, object, float]]:
    """One ``(metric, step, layer, value)`` row per value of each step/layer variable (long
    form: one header for every metric; a per-layer value has an empty step)."""
    rows: list[tuple[str, object, object, float]] = []
    for name, var in result.data_vars.items():
        if not var.dims or not set(var.dims) <= {"step", "layer"}:
            continue
        table = var.transpose(*[d for d in ("step", "layer") if d in var.dims])
        steps = table["step"].values if "step" in table.dims else [None]
        layers = table["layer"].values if "layer" in table.dims else [None]
        values = np.asarray(table.values, dtype=float).reshape(len(steps), len(layers))
        rows.extend((str(name), _plain(s) if s is not None else None,
                     None if lay is None else str(lay), float(values[i, j]))
                    for i, s in enumerate(steps) for j, lay in enumerate(layers))
    return rows


def _plain(value: object) -> object:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value) if np.isfinite(value) else None
    return str(value) if not isinstance(value, int | float) else value


@mapped
def show_command(store: StoreArg, as_json: JsonOpt = False,
                 output_format: _output.FormatOpt = _output.FormatChoice.table,
                 storage_options: StorageOptionsOpt = None,
                 repair: Annotated[bool, typer.Option(
                     "--repair", help="First finish a store whose last writer died before "
                     "finishing it: write the provenance of the done steps and consolidate "
                     "the metadata (refused while a writer is still working on it).")] = False,
                 ) -> None:
    """Summarise a store: steps done and failed, layers, sizes, provenance.

    With --format tsv or csv: the steps table, a blank line, then the layers table.
    """
    fmt = _output.output_format(output_format.value, as_json)
    if repair:
        repaired = api.repair_store(store, storage_options=storage_options)
        _output.stderr.print(
            f"repaired {store}: provenance of {len(repaired.done)} done step(s) written, "
            "metadata consolidated" + (f"; {len(repaired.not_done)} step(s) not done (rerun "
                                       "the audit to write them)" if repaired.not_done else ""))
    summary = api.store_summary(store, storage_options=storage_options)
    if fmt == "json":
        _output.print_json(summary.to_dict())
        return
    if fmt in ("tsv", "csv"):
        _write_show_tables(summary, fmt)
        return
    print_summary(summary)


def print_summary(summary: StoreSummary) -> None:
    """``show``'s text: the store, its source and probe, the steps and layers tables, the
    stored metrics (and which are stale or incomplete)."""
    out = _output.stdout
    out.print(f"store   {summary.store} ({human_size(summary.bytes_on_disk or 0)} on disk)")
    out.print(f"source  {summary.source}")
    if summary.tags:
        out.print("tags    " + ", ".join(f"{k}={v}" for k, v in summary.tags.items()))
    probe = summary.probe
    if probe:
        out.print(f"probe   {probe.get('name')} ({summary.n_samples} samples, "
                  f"{probe.get('kind')}, sha256 {str(probe.get('fingerprint'))[:12]})")
    else:
        out.print("probe   none (weights-only audit: Grams, no activations)")
    out.print(f"steps   {summary.n_done} done, {summary.n_failed} failed, "
              f"{len(summary.steps)} in all")
    table = Table(title="steps")
    for column in ("step", "label", "status"):
        table.add_column(column)
    for step in summary.steps:
        status = "done" if step.done else (
            "failed: " + escape(step.error.splitlines()[0][:80]) if step.error else "to do")
        table.add_row(str(step.step), step.label, status)
    out.print(table)
    out.print(_output.layers_table(
        (la.name, la.kind, la.width, la.gram_width, la.gram_form) for la in summary.layers))
    out.print(f"metrics {', '.join(summary.metrics) or 'none (run `flq-audit metrics`)'}")
    by_counts: dict[tuple[int, ...], list[str]] = {}
    for tag, counts in summary.stale_groups.items():
        by_counts.setdefault(tuple(counts), []).append(tag)
    for (computed_on, done), tags in by_counts.items():
        out.print(f"stale   {', '.join(tags)} (computed on {computed_on} of {done} done steps; "
                  f"run `flq-audit metrics {summary.store}`)")
    if summary.incomplete_metrics:
        out.print(f"incomplete {', '.join(summary.incomplete_metrics)} (written without "
                  f"their stamp: the run was interrupted; `flq-audit metrics {summary.store}` "
                  "completes them)")


def _write_show_tables(summary: StoreSummary, fmt: _output.OutputFormat) -> None:
    _output.write_rows(("step", "label", "done", "error"),
                       [(s.step, s.label, s.done, s.error) for s in summary.steps], fmt)
    sys.stdout.write("\n")
    _output.write_rows(("layer", "kind", "width", "gram_width"),
                       [(la.name, la.kind, la.width, la.gram_width) for la in summary.layers],
                       fmt)


@mapped
def export_command(
    store: StoreArg,
    out: Annotated[Path, typer.Argument(help="Output NetCDF file (.nc).")],
    with_activations: Annotated[bool, typer.Option(
        "--with-activations", help="Also export activations (large).")] = False,
    with_grams: Annotated[bool, typer.Option(
        "--with-grams", help="Also export the weight Grams.")] = False,
    as_json: JsonOpt = False,
    storage_options: StorageOptionsOpt = None,
) -> None:
    """Export metrics and coordinates to NetCDF4 (h5netcdf engine).

    Example: flq-audit export run.zarr run.nc
    """
    path = api.export(store, out, with_activations=with_activations, with_grams=with_grams,
                      storage_options=storage_options)
    if as_json:
        _output.print_json({"netcdf": str(path), "bytes": path.stat().st_size})
    else:
        _output.stdout.print(f"wrote {path} ({human_size(path.stat().st_size)})")
