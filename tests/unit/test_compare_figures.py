"""The comparison's figures stay readable from 2 runs × 3 layers to 10 runs × 50 layers:
bounded pixel size, no text off the canvas, run and layer keys beside the data."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from flq_audit.reading import _compare_figures as figures
from flq_audit.reading._figures import MAX_HEIGHT_PX, MAX_WIDTH_PX
from tests._helpers.synthetic import log_steps, metrics_dataset, neox_layer_names
from tests.unit.test_figures import _pixels, _texts_outside


def comparison(n_runs: int, n_layers: int, n_steps: int = 20) -> xr.Dataset:
    """``n_runs`` synthetic runs on one step and layer axis, tagged with a weight decay."""
    steps = log_steps(n_steps)
    layers = neox_layer_names(n_layers)
    runs = []
    for i in range(n_runs):
        one = metrics_dataset(layers, steps)[["target_linearity", "t90"]]
        one["target_linearity"] = one.target_linearity * (1 - 0.03 * i)
        one["t50"] = one.t90 / 2
        one["done"] = ("step", np.ones(n_steps, dtype=bool))
        one = one.assign_coords(depth=("layer", np.arange(n_layers)),
                                source_layer=("layer", np.asarray(layers, dtype=str)))
        runs.append(one)
    ds = xr.concat(runs, dim="run", coords="all")
    return ds.assign_coords(run=[f"wd_{i / 4:g}" for i in range(n_runs)],
                            weight_decay=("run", np.arange(n_runs) / 4))


SIZES = [(2, 3), (3, 12), (10, 50)]


@pytest.mark.parametrize(("n_runs", "n_layers"), SIZES, ids=[f"{r}runs-{n}layers" for r, n in SIZES])
@pytest.mark.parametrize("name", sorted(figures.FIGURES))
def test_figures_fit_and_keep_their_text_on_the_canvas(name, n_runs, n_layers):
    fig = figures.FIGURES[name](comparison(n_runs, n_layers), "weight_decay")
    width, height = _pixels(fig)
    assert width <= MAX_WIDTH_PX and height <= MAX_HEIGHT_PX
    assert _texts_outside(fig) == []


def test_small_multiples_draw_one_panel_per_run_and_key_many_layers_by_depth():
    fig = figures.tl_by_run_figure(comparison(10, 50), "weight_decay")
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
    assert len(panels) == 10
    assert [ax.get_title() for ax in panels][:2] == ["wd_0 (weight_decay=0)",
                                                     "wd_0.25 (weight_decay=0.25)"]
    assert all(len(ax.get_lines()) == 50 for ax in panels)
    assert any(ax.get_label() == "<colorbar>" for ax in fig.axes) and not fig.legends
    few = figures.tl_by_run_figure(comparison(2, 3), None)
    assert len(few.legends) == 1 and len(few.legends[0].get_texts()) == 3


def test_run_legend_names_every_run_beside_the_data():
    fig = figures.depth_profile_figure(comparison(10, 50), "weight_decay")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend = fig.legends[0]
    assert len(legend.get_texts()) == 10
    assert legend.get_texts()[-1].get_text().startswith("wd_2.25 (weight_decay=2.25), step ")
    box = legend.get_window_extent(renderer)
    assert not any(box.overlaps(ax.get_window_extent(renderer)) for ax in fig.axes)
    line = fig.axes[0].get_lines()[0]
    np.testing.assert_allclose(line.get_ydata(),
                               comparison(10, 50).target_linearity.isel(run=0, step=-1).values)


def test_numeric_by_colours_runs_along_a_scale_and_text_by_a_palette():
    ds = comparison(4, 3)
    along = figures.run_colours(ds, "weight_decay")
    assert along[0] != along[-1] and len(set(along)) == 4
    palette = figures.run_colours(ds, None)
    assert len(set(palette)) == 4
    assert figures.run_labels(ds, None) == [str(r) for r in ds.run.values]
