"""Figures of a comparison (Agg canvas, no pyplot state), readable from 2 to 10+ runs and
from 2 to 50+ layers.

- :func:`tl_by_run_figure`: small multiples, one panel per run, TL of every layer over steps
  (layers coloured by depth: a legend for few layers, a depth colour bar for many);
- :func:`depth_profile_figure`: TL over depth at each run's last done step, one line per run;
- :func:`crossing_times_figure`: t50 and t90 per layer, one line per run.

Runs are coloured by the ``by`` attribute when it is numeric (a colour bar of its values),
else by a qualitative palette with a legend beside the data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from flq_audit.constants import LAYER, STEP
from flq_audit.reading._figure_axes import step_axis, step_scale, value_axis
from flq_audit.reading._figures import (
    MAX_WIDTH_PX,
    _figure,
    _layer_key,
    _save,
    _stride,
    _viridis,
    _wrapped,
    short_labels,
)
from flq_audit.reading._runs import RUN, run_view

#: Panels per row of the small multiples.
RUN_COLUMNS = 5
#: Up to this many runs get a legend; more get a colour bar of ``by`` (when numeric).
MAX_LEGEND_RUNS = 12
TL = "target_linearity"


def _numeric(values: list[Any]) -> bool:
    return bool(values) and all(isinstance(v, int | float) and not isinstance(v, bool)
                                and np.isfinite(v) for v in values)


def run_labels(metrics: xr.Dataset, by: str | None) -> list[str]:
    """``run`` or ``run (by=value)``."""
    runs = [str(r) for r in metrics[RUN].values]
    if by is None or by not in metrics.coords:
        return runs
    return [f"{run} ({by}={value:g})" if isinstance(value, float) else f"{run} ({by}={value})"
            for run, value in zip(runs, metrics[by].values.tolist(), strict=True)]


def run_colours(metrics: xr.Dataset, by: str | None) -> list[tuple[float, ...]]:
    """One colour per run: along viridis by a numeric ``by``, else a qualitative palette."""
    from matplotlib import colormaps

    count = metrics.sizes[RUN]
    values = metrics[by].values.tolist() if by is not None and by in metrics.coords else []
    if _numeric(values) and len(set(values)) > 1:
        low, high = min(values), max(values)
        return [tuple(colormaps["viridis"](0.9 * (v - low) / (high - low))) for v in values]
    palette = colormaps["tab10" if count <= 10 else "tab20"]
    return [tuple(palette(i % palette.N)) for i in range(count)]


def _run_key(fig: Figure, axes: list, metrics: xr.Dataset, by: str | None) -> None:
    """A legend of the runs outside the panels, or a colour bar of ``by`` for many runs."""
    values = metrics[by].values.tolist() if by is not None and by in metrics.coords else []
    if metrics.sizes[RUN] > MAX_LEGEND_RUNS and _numeric(values) and len(set(values)) > 1:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        norm = Normalize(min(values), min(values) + (max(values) - min(values)) / 0.9)
        fig.colorbar(ScalarMappable(norm, "viridis"), ax=axes, label=str(by), shrink=0.9)
        return
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", title="run", fontsize=8,
               title_fontsize=8, ncols=1 if len(labels) <= 20 else 2)


def tl_by_run_figure(metrics: xr.Dataset, by: str | None = None, *,
                     title: str = "Target Linearity of each layer over training, per run") -> Figure:
    """Small multiples: one panel per run, one line per layer (coloured by depth)."""
    runs = [str(r) for r in metrics[RUN].values]
    cols = min(RUN_COLUMNS, len(runs))
    rows = -(-len(runs) // cols)
    fig = _figure(min(MAX_WIDTH_PX / 100, 3.6 * cols + 2.6), 3.0 * rows + 1.0)
    axes = list(fig.subplots(rows, cols, squeeze=False, sharey=True).ravel())
    layer_names = [str(name) for name in metrics[LAYER].values]
    colours = [tuple(c) for c in _viridis(len(layer_names))]
    labels = short_labels(layer_names)
    for ax, run, label in zip(axes, runs, run_labels(metrics, by), strict=False):
        one = run_view(metrics, run)
        steps = one[STEP].values.astype(float)
        for colour, layer, short in zip(colours, layer_names, labels, strict=True):
            if layer in one[LAYER].values:
                ax.plot(steps, one[TL].sel({LAYER: layer}).values, color=colour, label=short,
                        linewidth=1.1, marker="o" if steps.size <= 30 else None, markersize=2.5)
        if steps.size:
            step_axis(ax, steps)
        ax.set_title(_wrapped(label, fig, 9) if cols > 1 else label, fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    value_axis(axes[0], metrics[TL].values, bounded=True)
    for ax in axes[len(runs):]:
        ax.set_visible(False)
    for ax in axes[:len(runs)]:
        if ax not in axes[::cols]:
            ax.set_ylabel("")
        else:
            ax.set_ylabel("Target Linearity")
    _layer_key(fig, axes[:len(runs)], layer_names)
    fig.suptitle(_wrapped(title, fig, 12), fontsize=12)
    return fig


def _layer_axis(ax, layer_names: list[str]) -> None:
    labels = short_labels(layer_names)
    ticks = list(range(0, len(layer_names), _stride(len(layer_names), 25)))
    ax.set_xticks(ticks, [labels[i] for i in ticks], rotation=45, ha="right",
                  fontsize=8 if len(layer_names) <= 30 else 7)
    ax.set_xlabel("layer (input of), shallow → deep")


def depth_profile_figure(metrics: xr.Dataset, by: str | None = None) -> Figure:
    """TL of each layer at each run's last done step: one line per run."""
    layer_names = [str(name) for name in metrics[LAYER].values]
    fig = _figure(min(16.0, max(7.5, 4.5 + 0.22 * len(layer_names))), 4.8)
    ax = fig.add_subplot()
    positions = np.arange(len(layer_names))
    for run, label, colour in zip(metrics[RUN].values, run_labels(metrics, by),
                                  run_colours(metrics, by), strict=True):
        one = run_view(metrics, str(run))
        if not one.sizes[STEP]:
            continue
        last = one[TL].isel({STEP: -1})
        values = [float(last.sel({LAYER: n})) if n in one[LAYER].values else np.nan
                  for n in layer_names]
        ax.plot(positions, values, marker="o", markersize=3.5, color=colour, linewidth=1.3,
                label=f"{label}, step {int(one[STEP].values[-1])}")
    _layer_axis(ax, layer_names)
    value_axis(ax, metrics[TL].values, bounded=True)
    ax.set_ylabel("Target Linearity at the last step")
    ax.grid(alpha=0.3)
    _run_key(fig, [ax], metrics, by)
    ax.set_title("Depth profile of Target Linearity at each run's last step", fontsize=12)
    return fig


def crossing_times_figure(metrics: xr.Dataset, by: str | None = None) -> Figure:
    """t50 and t90 (first step with TL ≥ 50 % / 90 % of the layer's maximum) per layer."""
    layer_names = [str(name) for name in metrics[LAYER].values]
    names = [n for n in ("t50", "t90") if n in metrics]
    fig = _figure(min(20.0, max(10.0, 3.0 + 0.4 * len(layer_names))), 4.6)
    axes = list(fig.subplots(1, max(1, len(names)), squeeze=False).ravel())
    positions = np.arange(len(layer_names))
    steps = metrics[STEP].values.astype(float)
    for ax, name in zip(axes, names, strict=False):
        for run, label, colour in zip(metrics[RUN].values, run_labels(metrics, by),
                                      run_colours(metrics, by), strict=True):
            ax.plot(positions, metrics[name].sel({RUN: run}).values.astype(float), marker="o",
                    markersize=3.5, color=colour, linewidth=1.2, label=label)
        _layer_axis(ax, layer_names)
        scale = step_scale(steps)
        if scale is not None:
            ax.set_yscale(**scale)
        if steps.size:
            ax.set_ylim(float(steps.min()), float(steps.max()) * 1.05 + 1e-9)
        ax.set_ylabel(f"{name} (training step" + (", log scale)" if scale else ")"))
        ax.set_title(f"{name}: first step with TL ≥ {name[1:]} % of its maximum", fontsize=10)
        ax.grid(alpha=0.3)
    _run_key(fig, axes, metrics, by)
    fig.suptitle("When each layer linearized, per run", fontsize=12)
    return fig


FIGURES = {
    "tl_by_run.png": tl_by_run_figure,
    "depth_profile.png": depth_profile_figure,
    "crossing_times.png": crossing_times_figure,
}


def write_compare_figures(metrics: xr.Dataset, folder: Path, by: str | None) -> list[Path]:
    """Draw every comparison figure into ``folder``; returns the files."""
    return [_save(draw(metrics, by), folder / name) for name, draw in FIGURES.items()]
