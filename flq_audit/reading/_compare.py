"""Runs side by side: their metrics on a ``run`` dimension, a verdict per run, a report.

:func:`compare` computes what each store lacks (or refuses, naming it), combines the metric
variables with :func:`flq_audit.reading._runs.open_runs`, judges each run as the single-store
report does (:func:`flq_audit.reading.sequential_judgement`), and writes the NetCDF and the
report folder (:mod:`flq_audit.reading._compare_figures`, :mod:`flq_audit.reading._compare_page`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from flq_audit._stamps import is_complete, stale_steps
from flq_audit.constants import LAYER, STEP
from flq_audit.errors import MetricError, OptionError
from flq_audit.reading._export import metric_variables, write_netcdf
from flq_audit.reading._report import last_finite, sequential_judgement, t90_order
from flq_audit.reading._runs import RUN, Alignment, open_runs, run_view
from flq_audit.store import StoreLocation, open_dataset
from flq_audit.store._safety import check_export_target

#: Coordinates along ``run`` that describe where a run came from, not how it was configured.
_PROVENANCE = ("store", "source", "probe_fingerprint", "flq_audit_version", "model_sha256")


@dataclass(frozen=True)
class RunVerdict:
    """How one run's layers linearized, in the terms of the single-store report."""

    run: str
    by: float | str | None
    last_step: int | None
    sequential: bool
    spearman_last: float
    t90_increasing: bool
    deepest_layer: str
    deepest_tl_last: float
    verdict: str


@dataclass
class RunComparison:
    """What :func:`compare` found and wrote."""

    metrics: xr.Dataset
    verdicts: list[RunVerdict]
    by: str | None = None
    most_linear: str | None = None
    netcdf: Path | None = None
    folder: Path | None = None
    figures: list[Path] = field(default_factory=list)
    computed: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"runs": [str(r) for r in self.metrics[RUN].values], "by": self.by,
                "most_linear": self.most_linear,
                "verdicts": [asdict(v) for v in self.verdicts],
                "netcdf": None if self.netcdf is None else str(self.netcdf),
                "folder": None if self.folder is None else str(self.folder),
                "figures": [str(f) for f in self.figures], "computed": self.computed}


def missing_groups(ds: xr.Dataset) -> list[str]:
    """The report's metric groups that a store lacks, or holds stale or unfinished."""
    from flq_audit.reading._report import report_groups

    return [group for group in report_groups(ds)
            if not is_complete(ds, group) or stale_steps(ds, group) is not None]


def ensure_metrics(locations: Sequence[StoreLocation], *, compute: bool) -> dict[str, list[str]]:
    """Compute each store's missing groups (returned by store), or refuse naming them."""
    from flq_audit import api

    missing = {loc.display: missing_groups(open_dataset(loc)) for loc in locations}
    missing = {store: groups for store, groups in missing.items() if groups}
    if missing and not compute:
        listed = "; ".join(f"{store}: {', '.join(groups)}" for store, groups in missing.items())
        raise MetricError(f"metrics missing or stale, not computed (--no-compute): {listed}",
                          hint="Run `flq-audit metrics STORE --metric GROUPS` on each, or "
                          "compare without --no-compute.")
    for loc in locations:
        if loc.display in missing:
            api.compute_metrics(loc, metrics=missing[loc.display])
    return missing


def comparison_metrics(combined: xr.Dataset) -> xr.Dataset:
    """The metric variables, ``done`` and the run, step and layer coordinates."""
    names = [*metric_variables(combined), "done"]
    metrics = combined[names]
    unused = [name for name in metrics.coords if name not in metrics.dims
              and not set(metrics[name].dims) <= {RUN, STEP, LAYER}]
    return metrics.drop_vars(unused + [d for d in metrics.coords
                                       if d in metrics.dims and d not in (RUN, STEP, LAYER)
                                       and d not in metrics.sizes])


def judge(one: xr.Dataset, run: str, by_value: float | str | None) -> RunVerdict:
    """The verdict of one run (see :func:`flq_audit.reading.sequential_judgement`)."""
    observed, text = sequential_judgement(one)
    tl = one["target_linearity"]
    deepest = str(one[LAYER].values[-1])
    source = (str(one["source_layer"].values[-1]) if "source_layer" in one.coords else deepest)
    steps = one[STEP].values
    return RunVerdict(
        run=run, by=by_value, last_step=int(steps[-1]) if steps.size else None,
        sequential=observed,
        spearman_last=last_finite(one["depth_spearman"]) if "depth_spearman" in one else math.nan,
        t90_increasing=t90_order(one)[1], deepest_layer=source,
        deepest_tl_last=last_finite(tl.sel({LAYER: deepest})), verdict=text)


def _by_values(metrics: xr.Dataset, by: str | None) -> list[Any]:
    if by is None:
        return [None] * metrics.sizes[RUN]
    if by not in metrics.coords or metrics[by].dims != (RUN,):
        offered = sorted(str(n) for n in metrics.coords
                         if metrics[n].dims == (RUN,) and n != RUN and n not in _PROVENANCE)
        raise OptionError(f"--by {by}: no run attribute of that name; the runs have "
                          f"{', '.join(offered) or 'no tags'}",
                          hint="Tag runs at audit time with --tag KEY=VALUE.")
    return [v.item() if hasattr(v, "item") else v for v in metrics[by].values]


def _sorted_by(metrics: xr.Dataset, by: str | None) -> xr.Dataset:
    """Runs in the order of ``by`` (numbers before text; ties keep the given order)."""
    if by is None:
        return metrics
    values = _by_values(metrics, by)
    order = sorted(range(len(values)), key=lambda i: (
        not isinstance(values[i], int | float) or math.isnan(values[i]), values[i]
        if isinstance(values[i], int | float) else str(values[i])))
    return metrics.isel({RUN: order})


def compare(
    stores: Sequence[str | Path | StoreLocation],
    *,
    names: Sequence[str] | None = None,
    by: str | None = None,
    out: str | Path | None = None,
    report: str | Path | None = None,
    compute: bool = True,
    align: Alignment = "name",
    across_probes: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> RunComparison:
    """Set runs side by side: metrics with a ``run`` dimension, a verdict per run.

    Each store's missing report groups are computed first (``compute=False`` refuses,
    naming them). ``by`` names a run attribute (a ``--tag``) that orders and colours the
    runs. ``out`` writes the combined metrics as NetCDF; ``report`` writes a folder with the
    figures, the verdict table and ``index.html``. ``align`` and ``across_probes`` are
    those of :func:`flq_audit.open_runs`.
    """
    locations = [StoreLocation.parse(s, storage_options) for s in stores]
    if out is not None:
        check_export_target(Path(out))
    computed = ensure_metrics(locations, compute=compute)
    combined = open_runs(locations, names, align=align, across_probes=across_probes)
    metrics = _sorted_by(comparison_metrics(combined), by).compute()
    by_values = _by_values(metrics, by)
    verdicts = [judge(run_view(metrics, str(run)), str(run), value)
                for run, value in zip(metrics[RUN].values, by_values, strict=True)]
    finite = [v for v in verdicts if np.isfinite(v.deepest_tl_last)]
    most = max(finite, key=lambda v: v.deepest_tl_last).run if finite else None
    metrics.attrs.update(compared_by=by or "", most_linear_run=most or "",
                         verdicts=json.dumps([asdict(v) for v in verdicts], default=str))
    result = RunComparison(metrics=metrics, verdicts=verdicts, by=by, most_linear=most,
                           computed=computed)
    if out is not None:
        result.netcdf = write_netcdf(metrics, Path(out))
    if report is not None:
        from flq_audit.reading._compare_page import write_compare_folder

        write_compare_folder(result, Path(report))
    return result
