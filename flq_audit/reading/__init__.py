"""The read side: what flq-audit makes of a store once it is written.

The store's vocabulary on xarray (the ``ds.flq`` accessor), the NetCDF export, the report's
tables, verdict and findings, its figures and its self-contained HTML page, and the report
folder that holds them (:func:`flq_audit.api.report` writes it). Nothing here reads a
checkpoint or imports torch; it reads stores only.

Importing this package registers ``ds.flq`` (``import flq_audit`` does); everything else
loads on first use, so matplotlib, dask and h5netcdf stay out of commands that do not draw,
compute or export.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from flq_audit.reading._accessor import FlqAccessor, LayerRecord, StepRecord, StoreSummary

if TYPE_CHECKING:
    from flq_audit.reading._compare import RunComparison, RunVerdict, compare
    from flq_audit.reading._export import NETCDF_ENGINE, metric_variables, to_netcdf
    from flq_audit.reading._figures import (
        gram_spectrum_figure,
        metric_curves,
        short_labels,
        tl_heatmap,
    )
    from flq_audit.reading._folder import (
        NETCDF_NAME,
        Report,
        default_folder,
        prepare_folder,
        write_folder,
    )
    from flq_audit.reading._html import PAGE_NAME, render_page, write_page
    from flq_audit.reading._report import (
        LAYER_COLUMNS,
        LAYER_FIELDS,
        NEAR_FLOOR_RATIO,
        crossing_lines,
        cutoff_lines,
        depth_order_sentence,
        findings,
        fl_step_lines,
        floor_lines,
        layer_rows,
        layer_values,
        nonfinite_entries,
        nonfinite_lines,
        report_groups,
        sequential_verdict,
        write_report,
    )
    from flq_audit.reading._runs import open_runs

#: Public name → the private module that defines it, imported on first use.
_LAZY = {
    **dict.fromkeys(("RunComparison", "RunVerdict", "compare"), "flq_audit.reading._compare"),
    "open_runs": "flq_audit.reading._runs",
    **dict.fromkeys(("NETCDF_ENGINE", "metric_variables", "to_netcdf"),
                    "flq_audit.reading._export"),
    **dict.fromkeys(("gram_spectrum_figure", "metric_curves", "short_labels", "tl_heatmap"),
                    "flq_audit.reading._figures"),
    **dict.fromkeys(("NETCDF_NAME", "Report", "default_folder", "prepare_folder", "write_folder"),
                    "flq_audit.reading._folder"),
    **dict.fromkeys(("PAGE_NAME", "render_page", "write_page"), "flq_audit.reading._html"),
    **dict.fromkeys(("LAYER_COLUMNS", "LAYER_FIELDS", "NEAR_FLOOR_RATIO", "crossing_lines",
                     "cutoff_lines", "depth_order_sentence", "findings", "fl_step_lines",
                     "floor_lines", "layer_rows", "layer_values", "nonfinite_entries",
                     "nonfinite_lines", "report_groups", "sequential_verdict", "write_report"),
                    "flq_audit.reading._report"),
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "LAYER_COLUMNS", "LAYER_FIELDS", "NEAR_FLOOR_RATIO", "NETCDF_ENGINE", "NETCDF_NAME",
    "PAGE_NAME", "FlqAccessor", "LayerRecord", "Report", "RunComparison", "RunVerdict",
    "StepRecord", "StoreSummary", "compare", "crossing_lines", "cutoff_lines", "default_folder",
    "depth_order_sentence", "findings", "fl_step_lines", "floor_lines", "gram_spectrum_figure",
    "layer_rows", "layer_values", "metric_curves", "metric_variables", "nonfinite_entries",
    "nonfinite_lines", "open_runs", "prepare_folder", "render_page", "report_groups",
    "sequential_verdict", "short_labels", "tl_heatmap", "to_netcdf", "write_folder", "write_page",
    "write_report",
]
