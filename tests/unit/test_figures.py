"""Layout rules of the report figures at 2 to 200 layers and 3 to 1000 steps."""

from __future__ import annotations

import itertools
import subprocess
import sys

import matplotlib
import numpy as np
import pytest
from matplotlib.text import Text

from flq_audit import figures
from tests._helpers.synthetic import log_steps, metrics_dataset, neox_layer_names

SIZES = [(2, 3), (12, 251), (200, 1000), (48, 3), (2, 1000)]


def _texts_outside(fig) -> list[str]:
    """Every drawn, non-empty Text whose window extent leaves the canvas."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    canvas = fig.bbox
    outside = []
    for text in fig.findobj(Text):
        if not text.get_visible() or not text.get_text().strip():
            continue
        axes = text.axes
        if axes is not None and not axes.get_visible():
            continue
        if text in _undrawn_tick_labels(fig):
            continue
        box = text.get_window_extent(renderer)
        if (box.x0 < canvas.x0 - 1 or box.y0 < canvas.y0 - 1 or box.x1 > canvas.x1 + 1
                or box.y1 > canvas.y1 + 1):
            outside.append(text.get_text())
    return outside


def _undrawn_tick_labels(fig) -> set:
    """Tick labels of ticks outside their axis' view interval (matplotlib does not draw them)."""
    hidden = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                loc = tick.get_loc()
                if loc is None or not low - 1e-9 * abs(high - low) <= loc <= high + 1e-9 * abs(
                        high - low):
                    hidden.update({tick.label1, tick.label2})
    return hidden


def _columns(fig) -> int:
    """Panels in the widest row of visible data axes (colorbars excluded)."""
    rows: dict[float, int] = {}
    for ax in fig.axes:
        if ax.get_visible() and ax.get_label() != "<colorbar>":
            top = round(ax.get_position().y1, 3)
            rows[top] = rows.get(top, 0) + 1
    return max(rows.values())


def _pixels(fig) -> tuple[float, float]:
    return fig.get_figwidth() * fig.dpi, fig.get_figheight() * fig.dpi


@pytest.fixture(params=SIZES, ids=[f"{n}layers-{s}steps" for n, s in SIZES])
def dataset(request):
    n_layers, n_steps = request.param
    return metrics_dataset(neox_layer_names(n_layers), log_steps(n_steps))


def test_heatmap_fits_canvas(dataset):
    fig = figures.heatmap_figure(dataset["target_linearity"],
                                 title="Target Linearity of each layer's input, a long "
                                       "title that names the model and the optimiser in full")
    width, height = _pixels(fig)
    assert 600 <= width <= figures.MAX_WIDTH_PX and height <= figures.MAX_HEIGHT_PX
    assert _texts_outside(fig) == []
    cells = dataset.sizes["step"] * dataset.sizes["layer"]
    numbers = [t for t in fig.axes[0].texts]
    assert (len(numbers) == cells) == (dataset.sizes["step"] <= 24 and dataset.sizes["layer"]
                                       <= 32)
    renderer = fig.canvas.get_renderer()
    for axis_labels in (fig.axes[0].get_yticklabels(), fig.axes[0].get_xticklabels()):
        boxes = [t.get_window_extent(renderer) for t in axis_labels if t.get_text()]
        assert 0 < len(boxes) <= 60
        assert not any(a.overlaps(b) for a, b in itertools.pairwise(boxes))


def test_curves_wrap_and_fit(dataset):
    names = ["target_linearity", "surrogate", "alignment"]
    fig = figures.curves_figure(dataset, names, title="TL, surrogate and alignment per layer")
    assert _pixels(fig)[0] <= figures.MAX_WIDTH_PX
    assert _columns(fig) == figures.MAX_COLUMNS
    assert _texts_outside(fig) == []
    five = figures.curves_figure(dataset, names + names[:2], title="five panels")
    assert _columns(five) == 3 and _pixels(five)[0] <= figures.MAX_WIDTH_PX
    assert sum(ax.get_visible() and ax.get_label() != "<colorbar>" for ax in five.axes) == 5
    assert _texts_outside(five) == []


def test_spectrum_wraps_and_fits(dataset):
    fig = figures.spectrum_figure(dataset["gram_top_eigenvalues"])
    width, height = _pixels(fig)
    assert width <= figures.MAX_WIDTH_PX and height <= figures.MAX_HEIGHT_PX
    shown = min(dataset.sizes["layer"], figures.MAX_SPECTRUM_PANELS)
    rows = -(-shown // 4)
    assert _columns(fig) == -(-shown // rows)
    assert sum(ax.get_visible() for ax in fig.axes) == shown
    assert _texts_outside(fig) == []


def test_legends_sit_outside_the_data():
    ds = metrics_dataset(neox_layer_names(6), log_steps(20))
    fig = figures.curves_figure(ds, ["target_linearity", "surrogate"], title="t")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend_box = fig.legends[0].get_window_extent(renderer)
    for ax in fig.axes:
        assert not legend_box.overlaps(ax.get_window_extent(renderer))


def test_step_zero_stays_on_a_log_spaced_axis():
    steps = log_steps(60)
    ds = metrics_dataset(neox_layer_names(3), steps)
    fig = figures.curves_figure(ds, ["target_linearity"], title="t")
    ax = fig.axes[0]
    assert ax.get_xscale() == "symlog"
    x = ax.lines[0].get_xdata()
    assert np.isfinite(x).all() and x[0] == 0
    assert ax.get_xlim()[0] <= 0
    assert figures.step_scale(np.asarray([1.0, 10, 100, 1000])) == {"value": "log"}
    assert figures.step_scale(np.asarray([0.0, 10, 20, 30])) is None


def test_short_labels_drop_the_shared_prefix_and_stay_unique():
    names = neox_layer_names(48)
    labels = figures.short_labels(names)
    assert labels[47] == "11.mlp.dense_4h_to_h"
    assert labels[0] == "0.attention.query_key_value"
    assert figures.short_labels([*names, "embed_out"])[-2:] == ["11.mlp.dense_4h_to_h", "embed_out"]
    assert figures.layer_note([*names, "embed_out"]) == "layers: prefix 'gpt_neox.layers.' removed"
    assert figures.elide_middle("abcdefghij", 5) == "ab…ij"
    assert len(set(labels)) == 48 and max(map(len, labels)) <= figures.MAX_LABEL_CHARS
    assert figures.short_labels(["layers.0", "layers.1"]) == ["layers.0", "layers.1"]
    assert figures.short_labels(["fc"]) == ["fc"]
    assert figures.short_labels(["a.x", "a.x.y"], limit=3) == ["x", "x.y"]
    assert figures.short_labels(["model.layers.0", "model.layers.1"], limit=8) == ["0", "1"]
    same_ends = [f"model.{'block' * 8}.{i}.{'proj' * 6}" for i in range(3)]
    assert len(set(figures.short_labels(same_ends))) == 3


def test_figures_leave_pyplot_state_alone():
    backend = matplotlib.get_backend()
    ds = metrics_dataset(neox_layer_names(2), log_steps(3))
    figures.heatmap_figure(ds["target_linearity"])
    assert matplotlib.get_backend() == backend


def test_cli_start_up_does_not_import_matplotlib():
    code = ("import sys, flq_audit.cli, flq_audit.report, flq_audit.report_html\n"
            "from flq_audit.cli import _app, _report\n"
            "print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "False", out.stderr
    assert callable(__import__("flq_audit.report", fromlist=["tl_heatmap"]).tl_heatmap)
