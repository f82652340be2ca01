"""Axis rules of the report figures: the step axis follows how the checkpoints are spaced,
value axes keep short tick labels and switch to a log scale over many decades.

The step axis is linear unless a log axis spreads the checkpoints more evenly (its smallest
gap between neighbouring steps, as a share of the axis, is larger) and the non-zero steps
span at least :data:`LOG_SPAN` (two decades). On a log axis step 0 sits one decade to the
left of the first non-zero step (a symlog axis whose linear part is that decade) and the
ticks are 0 and the powers of ten, so "0" never meets "10⁰".
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.ticker import Locator, MaxNLocator, ScalarFormatter

LOG_SPAN = 100.0  # non-zero steps or positive values spanning this ratio may go on a log axis
LINSCALE = 0.9  # symlog: the linear part [0, first step] is drawn one decade wide (base 10)
MAX_DECADE_TICKS = 8
MIN_SPAN = 0.02  # smallest drawn y range: absolute for metrics in [0, 1], else relative
BOUNDED = frozenset({"target_linearity", "alignment"})


def _smallest_gap(positions: np.ndarray) -> float:
    """The smallest gap between neighbouring positions as a share of their range."""
    ordered = np.unique(positions)
    if ordered.size < 2:
        return 0.0
    return float(np.diff(ordered).min() / (ordered[-1] - ordered[0]))


def _log_positions(steps: np.ndarray) -> np.ndarray:
    """Where the steps sit on the log step axis, in decades (step 0 one decade left)."""
    positive = steps[steps > 0]
    logs = np.log10(positive)
    if positive.size < steps.size:
        logs = np.concatenate([[logs.min() - 1.0], logs])
    return logs


def log_spaced(steps: np.ndarray) -> bool:
    """Whether the steps are drawn on a log axis (see the module docstring)."""
    steps = np.unique(np.asarray(steps, dtype=float))
    positive = steps[steps > 0]
    if positive.size < 3 or positive.max() / positive.min() < LOG_SPAN:
        return False
    return _smallest_gap(_log_positions(steps)) > _smallest_gap(steps)


def step_scale(steps: np.ndarray) -> dict | None:
    """Keyword arguments for ``set_xscale`` (``None``: linear): log when every step is
    positive, symlog with step 0 one decade left of the first step otherwise."""
    steps = np.asarray(steps, dtype=float)
    if not log_spaced(steps):
        return None
    positive = steps[steps > 0]
    if positive.size == steps.size:
        return {"value": "log"}
    return {"value": "symlog", "linthresh": float(positive.min()), "linscale": LINSCALE}


def step_stride(steps: np.ndarray) -> int | None:
    """The common gap of evenly spaced steps (the last gap may be shorter: a final
    checkpoint saved between two regular ones); ``None`` when there is none."""
    gaps = np.diff(np.unique(np.asarray(steps, dtype=np.int64)))
    if gaps.size < 2 or np.any(gaps[:-1] != gaps[0]) or gaps[-1] > gaps[0]:
        return None
    return int(gaps[0])


def spacing_note(steps: np.ndarray) -> str:
    """How the checkpoints are spaced, for an axis with one column per checkpoint."""
    if log_spaced(steps):
        return "log-spaced"
    stride = step_stride(steps)
    if stride is not None:
        return f"every {stride} steps" if stride > 1 else "every step"
    return "unevenly spaced" if np.unique(steps).size > 2 else ""


class ZeroAndDecades(Locator):
    """Major ticks of the symlog step axis: 0 and powers of ten from ``first`` on, at most
    :data:`MAX_DECADE_TICKS` (every second, third, ... decade when there are more)."""

    def __init__(self, first: float) -> None:
        self.first = first

    def __call__(self) -> list[float]:
        low, high = self.axis.get_view_interval() if self.axis else (0.0, self.first)
        return self.tick_values(low, high)

    def tick_values(self, vmin: float, vmax: float) -> list[float]:
        low, high = sorted((vmin, vmax))
        start = math.ceil(math.log10(self.first) - 1e-9)
        stop = math.floor(math.log10(max(high, self.first)) + 1e-9)
        every = max(1, math.ceil((stop - start + 2) / MAX_DECADE_TICKS))
        decades = [10.0 ** k for k in range(start, stop + 1, every)]
        return ([0.0] if low <= 0 <= high else []) + decades


def step_axis(ax, steps: np.ndarray) -> None:
    """Scale, ticks and label of a step x axis."""
    scale = step_scale(steps)
    label = "training step"
    if scale is None:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
        if np.unique(steps).size == 1:
            ax.set_xlim(float(steps[0]) - 1, float(steps[0]) + 1)
    else:
        ax.set_xscale(**scale)
        label += " (log scale)"
    if scale and scale["value"] == "symlog":
        ax.xaxis.set_major_locator(ZeroAndDecades(scale["linthresh"]))
        label = f"training step (log scale; step 0 one decade left of {scale['linthresh']:g})"
    ax.set_xlabel(label)


def labels_overlap(labels) -> bool:
    """Whether two drawn, non-empty tick labels (of a laid-out figure) intersect."""
    boxes = [label.get_window_extent() for label in labels
             if label.get_visible() and label.get_text()]
    return any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def spaced_step_ticks(ax, steps: list[int], stride: int, **style) -> None:
    """Label every ``stride``-th column of a per-checkpoint x axis, widening the stride
    until no two labels intersect once the figure is laid out."""
    fig = ax.get_figure()
    while True:
        picks = list(range(0, len(steps), stride))
        ax.set_xticks(picks, [str(steps[i]) for i in picks], **style)
        fig.draw_without_rendering()
        if len(picks) <= 2 or not labels_overlap(ax.get_xticklabels()):
            return
        stride = math.ceil(stride * 1.25) if stride > 3 else stride + 1


def value_axis(ax, values: np.ndarray, *, bounded: bool) -> str:
    """Scale and range of a value y axis; returns ``"log"`` or ``"linear"``.

    Positive values spanning more than :data:`LOG_SPAN` go on a log axis (unless the metric
    is ``bounded`` in [0, 1]); a near-constant curve gets a y range of at least
    :data:`MIN_SPAN` (absolute when bounded, relative to its size otherwise) so the tick
    labels stay short instead of resolving rounding noise."""
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    if not bounded and finite.size and finite.min() > 0 and finite.max() / finite.min() > LOG_SPAN:
        ax.set_yscale("log")
        return "log"
    ax.yaxis.set_major_locator(MaxNLocator(nbins="auto", steps=[1, 2, 5, 10]))
    formatter = ScalarFormatter(useOffset=False)
    formatter.set_powerlimits((-4, 5))
    ax.yaxis.set_major_formatter(formatter)
    if finite.size:
        low, high = float(finite.min()), float(finite.max())
        span = MIN_SPAN if bounded else MIN_SPAN * (max(abs(low), abs(high)) or 1.0)
        if high - low < span:
            middle = (low + high) / 2
            ax.set_ylim(middle - span / 2, middle + span / 2)
    return "linear"


def colour_range(values: np.ndarray, per_unit: int = 20) -> tuple[float, float]:
    """Colour limits of a TL heatmap: from the finite minimum rounded down to a multiple of
    ``1 / per_unit`` to the maximum, at least that wide (a constant table gets a readable
    colorbar instead of one resolving rounding noise)."""
    finite = values[np.isfinite(values)]
    if not finite.size:
        return 0.0, 1.0
    step = 1.0 / per_unit
    low = float(np.floor(finite.min() * per_unit) / per_unit)
    high = float(finite.max())
    if high - low < step:
        low, high = (high - step, high) if high >= step else (low, low + step)
    return low, high


__all__ = [
    "BOUNDED", "LINSCALE", "LOG_SPAN", "MAX_DECADE_TICKS", "MIN_SPAN", "ZeroAndDecades",
    "colour_range", "labels_overlap", "log_spaced", "spaced_step_ticks", "spacing_note",
    "step_axis", "step_scale", "step_stride", "value_axis",
]
