"""Layout rules of the report figures at 2 to 200 layers and 3 to 1000 steps."""

from __future__ import annotations

import itertools
import subprocess
import sys

import matplotlib
import numpy as np
import pytest
from matplotlib.text import Text

from flq_audit.reading import _figures as figures
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
    code = ("import sys, flq_audit.cli, flq_audit.reading, flq_audit.reading._html\n"
            "from flq_audit.cli import _app, _report\n"
            "from flq_audit.reading import LAYER_COLUMNS, findings, sequential_verdict\n"
            "print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "False", out.stderr
    assert callable(__import__("flq_audit.reading", fromlist=["tl_heatmap"]).tl_heatmap)


PYTHIA_STEPS = np.array([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, *range(1000, 143_001, 1000)])


def _drawn_tick_labels(ax, which: str = "x") -> list:
    """The major tick labels matplotlib draws on one axis of a drawn figure."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    low, high = sorted(axis.get_view_interval())
    span = high - low
    return [label for tick in axis.get_major_ticks() for label in (tick.label1, tick.label2)
            if label.get_visible() and label.get_text()
            and low - 1e-9 * span <= tick.get_loc() <= high + 1e-9 * span]


def _overlapping_labels(fig) -> list[tuple[str, str]]:
    """Pairs of drawn tick labels, on any visible axis, whose boxes intersect."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    pairs = []
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        for which in ("x", "y"):
            labels = _drawn_tick_labels(ax, which)
            boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in labels]
            pairs += [(a, b) for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2)
                      if box_a.overlaps(box_b)]
    return pairs


def _plain(label) -> str:
    """A tick label's text without mathtext markup: ``$\\mathdefault{10^{1}}$`` → ``10^1``."""
    return (label.get_text().replace("$", "").replace("\\mathdefault", "")
            .replace("{", "").replace("}", ""))


@pytest.mark.parametrize("steps", [np.arange(0, 6 * 150, 6), np.arange(6, 6 * 150, 6),
                                   np.r_[np.arange(0, 5001, 500), 5234]],
                         ids=["every-6-from-0", "every-6-from-6", "every-500-then-final"])
def test_evenly_spaced_steps_get_a_linear_axis_and_no_log_label(steps):
    ds = metrics_dataset(neox_layer_names(4), steps)
    curves = figures.curves_figure(ds, ["target_linearity", "surrogate"], title="t")
    spectrum = figures.spectrum_figure(ds["gram_top_eigenvalues"])
    for ax in (curves.axes[0], curves.axes[1], spectrum.axes[0]):
        assert ax.get_xscale() == "linear"
        assert "log" not in ax.get_xlabel()
    assert _overlapping_labels(curves) == [] and _overlapping_labels(spectrum) == []
    heat = figures.heatmap_figure(ds["target_linearity"])
    label = heat.axes[0].get_xlabel()
    assert "log-spaced" not in label
    stride = 6 if steps[1] - steps[0] == 6 else 500
    assert f"every {stride} steps" in label
    assert _overlapping_labels(heat) == []


def test_log_spaced_steps_put_step_zero_one_decade_apart():
    doubling = np.array([0, *(6 * 2 ** np.arange(15))])  # 0, 6, 12, 24, ..., 98304
    ds = metrics_dataset(neox_layer_names(3), doubling)
    fig = figures.curves_figure(ds, ["target_linearity", "surrogate"], title="t")
    ax = fig.axes[0]
    assert ax.get_xscale() == "symlog"
    assert _overlapping_labels(fig) == []
    texts = [_plain(label) for label in _drawn_tick_labels(ax)]
    assert texts == ["0", "10^1", "10^2", "10^3", "10^4", "10^5"]
    x = lambda step: ax.transData.transform((step, 0.5))[0]  # noqa: E731
    assert x(6) - x(0) == pytest.approx(x(60) - x(6), rel=1e-6)  # step 0: one decade left
    heat = figures.heatmap_figure(ds["target_linearity"])
    assert "log-spaced" in heat.axes[0].get_xlabel()
    assert _overlapping_labels(heat) == []
    for steps in (PYTHIA_STEPS, log_steps(60), log_steps(1000)):
        fig = figures.curves_figure(metrics_dataset(neox_layer_names(2), steps),
                                    ["target_linearity"], title="t")
        assert fig.axes[0].get_xscale() == "symlog"
        assert _overlapping_labels(fig) == []
        assert [_plain(t) for t in _drawn_tick_labels(fig.axes[0])][:2] == ["0", "10^0"]


def test_heatmap_step_labels_never_overlap():
    selection = np.array([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 4000, 8000,
                          16000, 32000, 64000, 143000])
    for steps in (selection, PYTHIA_STEPS, log_steps(1000)):
        fig = figures.heatmap_figure(metrics_dataset(neox_layer_names(12), steps)
                                     ["target_linearity"])
        assert _overlapping_labels(fig) == []
        shown = [int(t.get_text()) for t in _drawn_tick_labels(fig.axes[0])]
        assert shown[0] == 0 and set(shown) <= set(steps.tolist()) and len(shown) >= 4


@pytest.mark.parametrize("noise", [0.0, 4e-16, 3e-15], ids=["equal", "rounding", "1e-15"])
def test_a_constant_tl_has_short_tick_labels(noise):
    ds = metrics_dataset(neox_layer_names(3), np.arange(0, 60, 6))
    rng = np.random.default_rng(1)
    ds["target_linearity"][:] = 1.0 - noise * rng.integers(0, 8, ds["target_linearity"].shape)
    ds["alignment"][:] = 0.5
    curves = figures.curves_figure(ds, ["target_linearity", "alignment"], title="t")
    heat = figures.heatmap_figure(ds["target_linearity"])
    curves.canvas.draw()
    heat.canvas.draw()
    for ax in [*curves.axes, heat.axes[1]]:  # the curve panels and the heatmap's colorbar
        if ax.get_visible():
            texts = [label.get_text() for label in _drawn_tick_labels(ax, "y")]
            assert texts and all(len(text.lstrip("−")) <= 5 for text in texts), texts
            assert ax.yaxis.get_offset_text().get_text() == ""
    for ax, value in zip(curves.axes[:2], (1.0, 0.5), strict=True):
        low, high = ax.get_ylim()
        assert low < value - 0.001 and high >= value and high - low <= 0.1


def test_surrogate_over_many_decades_gets_a_log_axis():
    steps = np.arange(0, 60, 6)
    ds = metrics_dataset(neox_layer_names(3), steps)
    wide = np.geomspace(1e-2, 1e4, steps.size)[:, None] * np.array([1.0, 2.0, 3.0])
    ds["surrogate"][:] = wide
    ds["surrogate"][:, 2] = np.nan  # a conv layer: no surrogate
    fig = figures.curves_figure(ds, ["target_linearity", "surrogate"], title="t")
    assert fig.axes[1].get_yscale() == "log"
    assert "log" in fig.axes[1].get_ylabel()
    assert fig.axes[0].get_yscale() == "linear"  # TL in [0, 1] stays linear
    assert _overlapping_labels(fig) == []
    for values in (np.linspace(10.0, 900.0, steps.size)[:, None],  # under two decades
                   np.r_[0.0, np.geomspace(1e-2, 1e4, steps.size - 1)][:, None],  # a zero
                   np.geomspace(1e-2, 1e4, steps.size)[:, None] * np.array([1.0, 1.0, -1.0])):
        ds["surrogate"][:] = values
        fig = figures.curves_figure(ds, ["surrogate"], title="t")
        assert fig.axes[0].get_yscale() == "linear"


def test_a_single_step_axis_has_integer_ticks():
    ds = metrics_dataset(neox_layer_names(2), np.array([5]))
    fig = figures.curves_figure(ds, ["target_linearity"], title="t")
    fig.canvas.draw()
    texts = [label.get_text() for label in _drawn_tick_labels(fig.axes[0])]
    assert "5" in texts and all(text.lstrip("−").isdigit() for text in texts), texts
