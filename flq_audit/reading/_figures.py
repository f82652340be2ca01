"""Report figures drawn on matplotlib ``Figure`` objects (Agg canvas, no pyplot state).

Every figure stays readable from 2 to 200 layers and 3 to 1000 steps: panel grids wrap at
:data:`MAX_COLUMNS`, the pixel size is bounded by :data:`MAX_WIDTH_PX` × :data:`MAX_HEIGHT_PX`,
layer names are shortened by :func:`short_labels`, the step and value axes follow the data
(:mod:`flq_audit.reading._figure_axes`), and legends sit outside the data.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure

from flq_audit.reading._figure_axes import (
    BOUNDED,
    colour_range,
    spaced_step_ticks,
    spacing_note,
    step_axis,
    step_scale,
    value_axis,
)

DPI = 100
MAX_WIDTH_PX = 2400
MAX_HEIGHT_PX = 2400
MAX_COLUMNS = 3
MAX_LABEL_CHARS = 28
MAX_SPECTRUM_PANELS = 12
MAX_LEGEND_LAYERS = 12
MAX_CELL_NUMBERS = (24, 32)  # at most this many steps × layers get numbers in their cells
_MAX_TICKS = 60

AXIS_LABELS = {
    "target_linearity": "Target Linearity (R², no intercept)",
    "surrogate": "surrogate tr(Y_cᵀ Z Zᵀ Y_c)",
    "alignment": "alignment A ∈ [0, 1]",
}


def common_prefix(names: list[str], share: float = 0.75) -> str:
    """The longest dotted prefix that at least ``share`` of the names (two or more) start with,
    leaving at least one component of each; ``""`` when there is none."""
    if len(names) < 2:
        return ""
    parts = [name.split(".") for name in names]
    needed = max(2, math.ceil(share * len(names)))
    best = ""
    for depth in range(1, max(len(p) for p in parts)):
        counts: dict[tuple[str, ...], int] = {}
        for p in parts:
            if len(p) > depth:
                counts[tuple(p[:depth])] = counts.get(tuple(p[:depth]), 0) + 1
        top = max(counts.items(), key=lambda item: item[1], default=None)
        if top is None or top[1] < needed:
            break
        best = ".".join(top[0]) + "."
    return best


def _strip(name: str, prefix: str) -> str:
    return name[len(prefix):] if prefix and name.startswith(prefix) else name


def elide_middle(text: str, limit: int = MAX_LABEL_CHARS) -> str:
    """``text`` cut to ``limit`` characters by replacing its middle with ``…``."""
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2
    tail = limit - 1 - head
    return f"{text[:head]}…{text[-tail:]}"


def short_labels(names: list[str], limit: int = MAX_LABEL_CHARS) -> list[str]:
    """Unique labels for figures: names longer than ``limit`` lose the common dotted prefix
    and are middle-elided; names that all fit are kept whole."""
    if all(len(name) <= limit for name in names):
        return list(names)
    prefix = common_prefix(names)
    labels = [elide_middle(_strip(name, prefix), limit) for name in names]
    if len(set(labels)) < len(labels):
        labels = [f"{i}:{elide_middle(_strip(name, prefix), limit - len(str(i)) - 1)}"
                  for i, name in enumerate(names)]
    return labels


def layer_note(names: list[str]) -> str:
    """What a reader needs to map short labels back to layer names."""
    if all(len(name) <= MAX_LABEL_CHARS for name in names):
        return ""
    prefix = common_prefix(names)
    return f"layers: prefix {prefix!r} removed" if prefix else ""


def _figure(width_in: float, height_in: float) -> Figure:
    width = min(width_in, MAX_WIDTH_PX / DPI)
    height = min(height_in, MAX_HEIGHT_PX / DPI)
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _wrapped(text: str, fig: Figure, fontsize: float) -> str:
    chars = max(20, int(fig.get_figwidth() * 72 / (0.6 * fontsize)))
    return "\n".join(textwrap.wrap(text, chars))


def _save(fig: Figure, out: str | Path) -> Path:
    fig.savefig(out, dpi=DPI)
    return Path(out)


def _stride(count: int, most: int = _MAX_TICKS) -> int:
    return max(1, math.ceil(count / most))


def _grid(count: int, columns: int = MAX_COLUMNS) -> tuple[int, int]:
    """(rows, columns) with at most ``columns`` per row, rows filled as evenly as possible."""
    rows = math.ceil(count / columns)
    return rows, math.ceil(count / rows)


def heatmap_figure(tl: xr.DataArray, *, title: str | None = None) -> Figure:
    """Step × layer heatmap of Target Linearity with labelled axes and a colorbar."""
    values = np.asarray(tl.transpose("layer", "step").values, dtype=float)
    steps = [int(s) for s in tl["step"].values]
    names = [str(name) for name in tl["layer"].values]
    labels = short_labels(names)
    fig = _figure(min(20.0, max(7.0, 4.0 + 0.45 * len(steps))),
                  min(16.0, max(3.8, 1.8 + 0.26 * len(names))))
    ax = fig.add_subplot()
    low, high = colour_range(values)
    image = ax.imshow(values, aspect="auto", cmap="viridis", interpolation="nearest",
                      vmin=low, vmax=high)
    ys = range(0, len(names), _stride(len(names)))
    ax.set_yticks(list(ys), [labels[i] for i in ys], fontsize=9 if len(names) <= 30 else 7)
    spacing = spacing_note(np.asarray(steps))
    axis = f"training step (checkpoint{', ' + spacing if spacing else ''})"
    note = layer_note(names)
    ax.set_xlabel(_wrapped(f"{axis}; {note}" if note else axis, fig, 10))
    ax.set_ylabel("layer (input of)")
    fig.colorbar(image, ax=ax, label="Target Linearity\n(R², no intercept)")
    fig.suptitle(_wrapped(title or "Target Linearity per layer over training", fig, 12),
                 fontsize=12)
    spaced_step_ticks(ax, steps, _stride(len(steps), 25), rotation=45, ha="right")
    if len(steps) <= MAX_CELL_NUMBERS[0] and len(names) <= MAX_CELL_NUMBERS[1]:
        for (i, j), value in np.ndenumerate(values):
            if np.isfinite(value):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if value < (low + high) / 2 else "black")
    return fig


def curves_figure(metrics: xr.Dataset, names: list[str], *, title: str) -> Figure:
    """One panel per metric, one line per layer, over steps; wraps at :data:`MAX_COLUMNS`."""
    rows, cols = _grid(len(names))
    fig = _figure(5.0 * cols + 2.4, 4.0 * rows + 0.8)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    steps = metrics["step"].values.astype(float)
    layer_names = [str(name) for name in metrics["layer"].values]
    labels = short_labels(layer_names)
    colours = [tuple(c) for c in _viridis(len(layer_names))]
    marker = "o" if steps.size <= 50 else None
    for ax, name in zip(axes, names, strict=False):
        for colour, layer, label in zip(colours, layer_names, labels, strict=True):
            ax.plot(steps, metrics[name].sel(layer=layer).values, marker=marker, markersize=3,
                    color=colour, label=label, linewidth=1.2)
        step_axis(ax, steps)
        scale = value_axis(ax, metrics[name].values, bounded=name in BOUNDED)
        ax.set_ylabel(AXIS_LABELS.get(name, name) + (" (log scale)" if scale == "log" else ""))
        ax.set_title(name)
        ax.grid(alpha=0.3)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    _layer_key(fig, axes[: len(names)], layer_names)
    fig.suptitle(_wrapped(title, fig, 12), fontsize=12)
    return fig


def _viridis(count: int) -> np.ndarray:
    from matplotlib import colormaps

    return colormaps["viridis"](np.linspace(0.0, 0.9, max(1, count)))[:count]


def _layer_key(fig: Figure, axes, layer_names: list[str]) -> None:
    """A legend outside the panels (few layers) or a depth colorbar (many layers)."""
    note = layer_note(layer_names)
    if len(layer_names) <= MAX_LEGEND_LAYERS:
        title = "layer (input of)" + (f"\n{note}" if note else "")
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper",
                   title=title, fontsize=8, title_fontsize=8)
        return
    from matplotlib.cm import ScalarMappable

    colours = ListedColormap(_viridis(256))
    mappable = ScalarMappable(Normalize(0, len(layer_names) - 1), colours)
    bar = fig.colorbar(mappable, ax=list(axes), label="layer depth (0 = first layer)",
                       shrink=0.9)
    bar.ax.tick_params(labelsize=8)


def spectrum_layers(count: int, most: int = MAX_SPECTRUM_PANELS) -> list[int]:
    """Indices of the layers drawn: all, or ``most`` evenly spaced including first and last."""
    if count <= most:
        return list(range(count))
    return sorted({round(i) for i in np.linspace(0, count - 1, most)})


def below_floor(top: xr.DataArray, eps: float, width: xr.DataArray) -> xr.DataArray:
    """Where an eigenvalue lies below the Gram's numerical floor λ_max · ε · width (rounding
    noise of a Gram stored with machine precision ε, not a property of the weights)."""
    lam_max = top.max("eigen")
    return top < lam_max * eps * width.astype(float)


def spectrum_figure(top: xr.DataArray, *, eps: float | None = None,
                    width: xr.DataArray | None = None) -> Figure:
    """Top eigenvalues of WᵀW over steps, one panel per layer (at most 12, wrapped).

    With ``eps`` (the stored Gram's machine precision) and ``width`` (per layer), eigenvalues
    below the numerical floor :func:`below_floor` are not drawn, and the title says so."""
    floored = False
    if eps is not None and width is not None:
        top = top.where(~below_floor(top, eps, width.sel(layer=top["layer"])))
        floored = True
    names = [str(name) for name in top["layer"].values]
    labels = short_labels(names)
    shown = spectrum_layers(len(names))
    rows, cols = _grid(len(shown), 4)
    fig = _figure(4.0 * cols + 1.6, 3.2 * rows + 1.0)
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True).ravel()
    steps = top["step"].values.astype(float)
    from matplotlib import colormaps

    magma = colormaps["magma"]
    for ax, index in zip(axes, shown, strict=False):
        values = top.isel(layer=index).transpose("step", "eigen").values
        for k in range(values.shape[1]):
            ax.plot(steps, values[:, k], color=magma(0.85 * k / max(1, values.shape[1] - 1)),
                    label=f"λ{k + 1}" if k < 3 else None)
        step_axis(ax, steps)
        ax.set_yscale("log")
        ax.set_title(labels[index], fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes[len(shown):]:
        ax.set_visible(False)
    for row in range(rows):
        axes[row * cols].set_ylabel("eigenvalue of WᵀW")
    for position, ax in enumerate(axes[: len(shown)]):
        if position + cols < len(shown):
            ax.set_xlabel("")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", fontsize=8)
    heading = "Weight Gram spectrum over training (top eigenvalues)"
    if len(shown) < len(names):
        heading += f"; {len(shown)} of {len(names)} layers, evenly spaced by depth"
    if floored:
        heading += (f"; eigenvalues below λ_max·ε·width (ε = {eps:.2g}, the stored Gram's "
                    "numerical floor) are not drawn")
    note = layer_note(names)
    fig.suptitle(_wrapped(heading + (f"; {note}" if note else ""), fig, 12), fontsize=12)
    return fig


def tl_heatmap(tl: xr.DataArray, out: str | Path, *, title: str | None = None) -> Path:
    """Write :func:`heatmap_figure` to ``out`` (PNG)."""
    return _save(heatmap_figure(tl, title=title), out)


def metric_curves(metrics: xr.Dataset, names: list[str], out: str | Path, *, title: str) -> Path:
    """Write :func:`curves_figure` to ``out`` (PNG)."""
    return _save(curves_figure(metrics, names, title=title), out)


def gram_spectrum_figure(top: xr.DataArray, out: str | Path, *, eps: float | None = None,
                         width: xr.DataArray | None = None) -> Path:
    """Write :func:`spectrum_figure` to ``out`` (PNG)."""
    return _save(spectrum_figure(top, eps=eps, width=width), out)


__all__ = [
    "AXIS_LABELS", "DPI", "MAX_CELL_NUMBERS", "MAX_COLUMNS", "MAX_HEIGHT_PX", "MAX_LABEL_CHARS",
    "MAX_LEGEND_LAYERS", "MAX_SPECTRUM_PANELS", "MAX_WIDTH_PX", "below_floor", "common_prefix",
    "curves_figure", "elide_middle", "gram_spectrum_figure", "heatmap_figure", "layer_note",
    "metric_curves", "short_labels", "spectrum_figure", "spectrum_layers", "step_scale",
    "tl_heatmap",
]
