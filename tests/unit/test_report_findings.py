"""What the report says: depth order over steps, t50/t90, FL steps, cut-off, figure bounds."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from matplotlib.image import imread

from flq_audit.reading import _figures as figures
from flq_audit.reading import (
    cutoff_lines,
    depth_order_sentence,
    findings,
    fl_step_lines,
    write_report,
)
from tests._helpers.synthetic import log_steps, metrics_dataset, neox_layer_names

STEPS = log_steps(251)
LAYERS = ["fc0", "fc1", "fc2", "fc3"]


def _tl(holds: np.ndarray) -> xr.DataArray:
    """TL over 4 layers: increasing with depth where ``holds``, reversed elsewhere."""
    rising = np.array([0.2, 0.4, 0.6, 0.8])
    rows = [rising if ok else rising[::-1] for ok in holds]
    return xr.DataArray(np.asarray(rows), dims=("step", "layer"),
                        coords={"step": STEPS[: len(holds)], "layer": LAYERS})


def test_depth_order_from_a_step_on_with_one_exception():
    holds = np.zeros(251, dtype=bool)
    holds[86:] = True
    holds[169] = False
    holds[[10, 40, 41]] = True  # early steps that hold do not start the tail
    sentence = depth_order_sentence(_tl(holds))
    expected_count = 251 - 86 - 1
    assert sentence == (f"the depth order of TL (non-decreasing with depth) holds from step "
                        f"{STEPS[86]} on, except step {STEPS[169]} ({expected_count} of 251 "
                        "steps)")


def test_rounding_level_differences_are_ties():
    tl = _tl(np.ones(3, dtype=bool)).copy()
    tl[1] = [0.5, 0.5 - 2e-7, 0.6, 0.6]  # float32-level noise between equal layers
    tl[2] = [0.5, 0.4, 0.6, 0.7]  # a real inversion
    assert depth_order_sentence(tl).endswith(f"({STEPS[2]}); it holds at 2 of 3 steps")


def test_two_failing_steps_in_a_row_end_the_tail():
    holds = np.ones(251, dtype=bool)
    holds[[100, 101]] = False
    holds[200] = False
    sentence = depth_order_sentence(_tl(holds))
    assert f"from step {STEPS[102]} on, except step {STEPS[200]} (148 of 251" in sentence


def test_depth_order_everywhere_and_not_at_the_last_step():
    assert depth_order_sentence(_tl(np.ones(5, dtype=bool))) == (
        f"the depth order of TL (non-decreasing with depth) holds at every step ({STEPS[0]} "
        f"to {STEPS[4]})")
    holds = np.array([True, True, False, True, False])
    assert depth_order_sentence(_tl(holds)).endswith(
        f"does not hold at the last step ({STEPS[4]}); it holds at 3 of 5 steps")


def test_findings_name_t50_and_t90_of_every_layer():
    metrics = metrics_dataset(LAYERS, STEPS)
    metrics["t50"] = ("layer", [5.0, 86.0, 900.0, np.nan])
    lines = findings(metrics)
    t90 = metrics["t90"].values
    crossing = next(line for line in lines if line.startswith("t50/t90"))
    for layer, t50, t_90 in zip(LAYERS, ["5", "86", "900", "—"], t90, strict=True):
        assert f"{layer} {t50}/{t_90:.0f}" in crossing


def _r_step(values: list[float]) -> xr.Dataset:
    table = np.repeat(np.asarray(values)[:, None], 2, axis=1)
    return xr.Dataset({"fl_r_step": (("step", "layer"), table)},
                      coords={"step": np.arange(len(values)), "layer": ["a", "b"]})


def test_momentum_like_r_step_is_flagged_and_sgd_is_not():
    momentum = fl_step_lines(_r_step([1e-13, 0.7, 2.5, 7.9, np.nan]))
    assert momentum[0].startswith("FL: the checkpoints are not plain SGD steps")
    assert "median fl_r_step = 1.6 (range 1e-13 to 7.9" in momentum[0]  # of 8 finite values
    assert "measure the optimizer, not Theorem 1" in momentum[0]
    assert "signature of momentum" in momentum[1]
    sgd = fl_step_lines(_r_step([1e-13, 3e-12, 2e-12, np.nan]))
    assert len(sgd) == 1 and "are plain SGD steps" in sgd[0] and "not plain" not in sgd[0]
    assert fl_step_lines(xr.Dataset()) == []


def test_entries_whose_tl_depends_on_the_cutoff_are_flagged():
    cutoff = 1e-6
    kept = np.array([[1e-3, 1e-3], [2e-6, 1e-3]])  # 2e-6 < 10 x cut-off: near the cut-off
    dropped = np.array([[1e-9, 0.0], [1e-12, 5e-7]])  # 5e-7 > cut-off / 10: near it too
    ds = xr.Dataset({"target_linearity_cutoff": (("step", "layer"), np.full((2, 2), cutoff)),
                     "target_linearity_kept_ratio": (("step", "layer"), kept),
                     "target_linearity_dropped_ratio": (("step", "layer"), dropped),
                     "target_linearity_rank": (("step", "layer"), np.array([[5, 6], [7, 8]]))},
                    coords={"step": [0, 10], "layer": ["a", "b"]})
    lines = cutoff_lines(ds)
    assert "at 2 (step, layer) entries" in lines[0]
    assert lines[1] == "  step 10, layer a: rank 7, kept 2e-06, dropped 1e-12 (× σ_max)"
    assert lines[2] == "  step 10, layer b: rank 8, kept 0.001, dropped 5e-07 (× σ_max)"
    assert cutoff_lines(ds.drop_vars(["target_linearity_kept_ratio"])) == []  # no records


def _png_size(path) -> tuple[int, int]:
    image = imread(path)
    return image.shape[1], image.shape[0]


def test_report_figures_of_251_steps_are_bounded_and_unnumbered(tmp_path):
    names = neox_layer_names(12)
    metrics = metrics_dataset(names, STEPS)
    paths = write_report(metrics, tmp_path)
    for path in paths:
        width, height = _png_size(path)
        assert width <= figures.MAX_WIDTH_PX and height <= figures.MAX_HEIGHT_PX, path
    heat = figures.heatmap_figure(metrics["target_linearity"])
    ax = heat.axes[0]
    assert list(ax.texts) == []  # no per-cell numbers
    few = figures.heatmap_figure(metrics["target_linearity"].isel(step=slice(0, 5)))
    assert len(few.axes[0].texts) == 5 * 12  # numbers in the cells of a small table
    assert len(ax.get_xticks()) <= 25
    assert "log-spaced" in ax.get_xlabel()


def test_spectrum_stops_at_the_numerical_floor():
    eps = float(np.finfo(np.float32).eps)
    width = xr.DataArray([64, 512], dims="layer", coords={"layer": ["a", "b"]})
    eig = np.array([10.0, 1.0, 1e-3, 1e-5, 1e-6, 1e-9, 1e-11, 0.0])
    top = xr.DataArray(np.broadcast_to(eig, (3, 2, 8)).copy(), dims=("step", "layer", "eigen"),
                       coords={"step": [0, 1, 2], "layer": ["a", "b"]})
    fig = figures.spectrum_figure(top, eps=eps, width=width)
    for ax, w in zip(fig.axes[:2], (64, 512), strict=True):
        floor = 10.0 * eps * w  # λ_max · ε · width, computed here
        drawn = [np.asarray(line.get_ydata(), dtype=float) for line in ax.get_lines()]
        for k, line in enumerate(drawn):
            assert np.isfinite(line).all() == (eig[k] >= floor), (w, k)
    assert "not drawn" in fig._suptitle.get_text()


@pytest.mark.parametrize("count", [3, 251])
def test_findings_of_a_synthetic_store_are_sentences(count):
    metrics = metrics_dataset(LAYERS, STEPS[:count])
    lines = findings(metrics)
    assert lines[0].startswith("the depth order of TL")
    assert all(isinstance(line, str) and line for line in lines)


# ------------------------------------------------------------------ verdict and chance floor
def _verdict_metrics(tl_rows, t90, floor=0.1) -> xr.Dataset:
    """TL (step × 4 layers), t90 per layer, ρ per step from the TL rows, a constant floor."""
    from scipy.stats import spearmanr

    tl = np.asarray(tl_rows, dtype=float)
    steps = np.arange(tl.shape[0]) * 10
    rho = [spearmanr(np.arange(tl.shape[1]), row).statistic for row in tl]
    return xr.Dataset(
        {"target_linearity": (("step", "layer"), tl),
         "target_linearity_chance_floor": (("step", "layer"), np.full(tl.shape, floor)),
         "t90": (("layer",), np.asarray(t90, dtype=float)),
         "depth_spearman": (("step",), np.asarray(rho, dtype=float))},
        coords={"step": steps, "layer": LAYERS})


RISING = [[0.2, 0.3, 0.4, 0.5], [0.3, 0.5, 0.7, 0.9]]


def test_verdict_observed_when_t90_rises_and_depth_is_ordered():
    from flq_audit.reading import sequential_verdict

    verdict = sequential_verdict(_verdict_metrics(RISING, [0, 10, 10, 10]))
    assert verdict.endswith("→ sequential linearization observed"), verdict
    assert verdict.startswith("t90 increases with depth")


def test_verdict_with_every_t90_equal_says_no_order():
    from flq_audit.reading import sequential_verdict

    verdict = sequential_verdict(_verdict_metrics(RISING, [0, 0, 0, 0]))
    assert "increases" not in verdict
    assert "t90 is step 0 for every layer (the first done step" in verdict
    assert "sequential linearization not observed" in verdict


def test_verdict_refuses_when_the_depth_order_fails_at_the_last_step():
    from flq_audit.reading import sequential_verdict

    # ρ = 0.8 > 0.5 at the last step, yet layer 3 is below layer 2: the order does not hold
    rows = [[0.2, 0.3, 0.4, 0.5], [0.1, 0.2, 0.4, 0.3]]
    verdict = sequential_verdict(_verdict_metrics(rows, [0, 10, 10, 10]))
    assert "not observed" in verdict
    assert "the depth order of TL does not hold at the last step (10; it holds at 1 of 2 " \
           "steps)" in verdict


@pytest.mark.parametrize(("floor", "tl_last", "flagged"), [
    (0.833, 0.667, True),   # TL below its floor
    (0.6, 0.9, True),       # floor rank/N ≥ 0.5
    (1.0, 1.0, True),       # the trivial regime N ≤ d
    (0.1, 0.9, False),
])
def test_layers_at_or_near_the_chance_floor_are_flagged(floor, tl_last, flagged):
    from flq_audit.reading import findings, layer_rows, layer_values, sequential_verdict

    rows = [[0.2, 0.3, 0.4, 0.5], [0.3, 0.5, 0.7, tl_last]]
    metrics = _verdict_metrics(rows, [0, 10, 10, 10])
    floors = np.full((2, 4), 0.1)
    floors[:, 3] = floor
    metrics["target_linearity_chance_floor"] = (("step", "layer"), floors)
    values = layer_values(metrics)
    assert [row[-1] for row in values] == [False, False, False, flagged]
    assert values[3][3] == floor
    assert layer_rows(metrics)[3][3].endswith("(at floor)") == flagged
    said = [line for line in findings(metrics) if line.startswith("chance floor")]
    verdict = sequential_verdict(metrics)
    if flagged:
        assert f"fc3 (TL {tl_last:.3f}, floor {floor:.3f})" in said[0]
        assert "TL of fc3 is at or near the chance floor" in verdict
        assert "not observed" in verdict
    else:
        assert not said
        assert "floor" not in verdict


def test_the_html_table_marks_a_layer_at_its_floor():
    from flq_audit.reading._html import _layer_section

    metrics = _verdict_metrics([[0.2, 0.3, 0.4, 0.5], [0.3, 0.5, 0.7, 0.667]], [0, 10, 10, 10])
    floors = np.full((2, 4), 0.1)
    floors[:, 3] = 0.833
    metrics["target_linearity_chance_floor"] = (("step", "layer"), floors)
    html = "".join(_layer_section(metrics))
    assert "<th>floor last</th>" in html
    assert "<td>0.833 (at floor)</td>" in html
    assert html.count("(at floor)") == 1
