"""Primal (d × d) and dual (n × n) Target Linearity, and the rank records.

Expected values come from ``numpy.linalg.lstsq`` and ``numpy.linalg.svd`` on the features,
or from features built with known singular values.
"""

from __future__ import annotations

import numpy as np
import pytest

from flq_audit.metrics import cutoff_sensitive, target_linearity
from flq_audit.metrics._kernels.moments import DualMoments, Moments, _moments_update
from flq_audit.metrics._kernels.target_linearity import fit_target_linearity
from flq_audit.metrics._spec import get_spec
from tests._helpers.metric_tester import MetricTester


def _tl_lstsq(h: np.ndarray, y: np.ndarray) -> float:
    yc = y - y.mean(axis=0)
    fit = np.linalg.lstsq(h, yc, rcond=None)[0]
    return 1.0 - float(((yc - h @ fit) ** 2).sum()) / float((yc**2).sum())


def _fits(h: np.ndarray, y: np.ndarray, **options):
    primal = fit_target_linearity(
        Moments.from_matrix(_moments_update(h, y), h.shape[1], y.shape[1]), **options)
    dual = fit_target_linearity(DualMoments(h @ h.T, y, h.shape[1]), **options)
    return primal, dual


def _problem(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    y = np.eye(4)[labels]
    h = y @ rng.normal(size=(4, d)) + rng.normal(size=(n, d)) + 0.5
    return h, y


@pytest.mark.parametrize(("n", "d"), [(40, 120), (120, 40), (60, 60), (30, 31)])
def test_primal_and_dual_equal_each_other_and_lstsq(n, d):
    h, y = _problem(n, d, seed=n + d)
    h[:, 2] = h[:, 0] - 3 * h[:, 1]  # an exact collinearity: a rank below min(n, d)
    primal, dual = _fits(h, y)
    assert (primal.dual, dual.dual) == (False, True)
    assert primal.tl == pytest.approx(dual.tl, abs=1e-10)
    assert primal.tl == pytest.approx(_tl_lstsq(h, y), abs=1e-10)
    rank = np.linalg.matrix_rank(h)
    assert primal.rank == dual.rank == rank
    assert primal.n_features == dual.n_features == d
    sv = np.linalg.svd(h, compute_uv=False)
    assert primal.kept_ratio == pytest.approx(sv[rank - 1] / sv[0], rel=1e-6)
    assert dual.kept_ratio == pytest.approx(sv[rank - 1] / sv[0], rel=1e-6)
    assert primal.cutoff == dual.cutoff == pytest.approx(1e-6)
    assert primal.dropped_ratio < 1e-7 and dual.dropped_ratio < 1e-7  # rounding only


@pytest.mark.parametrize("denominator", ["column", "row"])
def test_primal_and_dual_equal_with_ridge_and_continuous_targets(denominator):
    rng = np.random.default_rng(3)
    h = rng.normal(size=(25, 70))
    y = h[:, :3] @ rng.normal(size=(3, 2)) + rng.normal(size=(25, 2)) + np.arange(25)[:, None]
    primal, dual = _fits(h, y, ridge=0.7, denominator=denominator)
    assert primal.tl == pytest.approx(dual.tl, abs=1e-10)
    # closed form of the ridge fit on the same centred targets
    yc = y - y.mean(axis=0)
    fit = np.linalg.solve(h.T @ h + 0.7 * np.eye(70), h.T @ yc)
    total = (yc**2).sum() if denominator == "column" else (
        (yc - yc.mean(axis=1, keepdims=True)) ** 2).sum()
    assert dual.tl == pytest.approx(1 - ((yc - h @ fit) ** 2).sum() / total, abs=1e-10)


@pytest.mark.parametrize(("n", "d"), [(30, 90), (90, 30)])
def test_whole_array_function_picks_either_form_with_the_same_value(n, d):
    h, y = _problem(n, d, seed=7)
    auto = target_linearity(h, y)
    assert auto == pytest.approx(target_linearity(h, y, form="primal"), abs=1e-10)
    assert auto == pytest.approx(target_linearity(h, y, form="dual"), abs=1e-10)
    assert auto == pytest.approx(_tl_lstsq(h, y), abs=1e-10)
    with pytest.raises(ValueError, match="form must be"):
        target_linearity(h, y, form="kernel")


def _with_singular_values(sv: np.ndarray, n: int, seed: int) -> np.ndarray:
    """An n × len(sv) matrix whose singular values are exactly ``sv`` (orthonormal U, V)."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.normal(size=(n, len(sv))))
    v, _ = np.linalg.qr(rng.normal(size=(len(sv), len(sv))))
    return (u * sv) @ v.T


@pytest.mark.parametrize("n", [40, 8])  # primal for n = 40 (d + k + 1 = 9), dual for n = 8
def test_rank_records_are_the_singular_values_around_the_cutoff(n):
    sv = np.array([1.0, 0.5, 1e-3, 3e-6, 4e-7, 1e-9])
    h = _with_singular_values(sv, n=max(n, 6), seed=n)[:n] if n >= 6 else None
    y = np.eye(2)[np.arange(len(h)) % 2]
    fit = (_fits(h, y)[0] if n == 40 else _fits(h, y)[1])
    assert fit.rank == 4  # 3e-6 > 1e-6 = √rtol, 4e-7 is not
    assert fit.kept_ratio == pytest.approx(3e-6, rel=1e-4)
    assert fit.dropped_ratio == pytest.approx(4e-7, rel=1e-3)
    assert fit.cutoff == pytest.approx(1e-6)


def test_cutoff_sensitive_flags_ratios_near_the_cutoff_only():
    import xarray as xr

    kept = np.array([[1e-3, 5e-6, 1e-3], [1e-3, 1e-3, np.nan]])
    dropped = np.array([[1e-9, 1e-9, 3e-7], [0.0, 2e-8, np.nan]])
    ds = xr.Dataset({
        "target_linearity_cutoff": (("step", "layer"), np.full((2, 3), 1e-6)),
        "target_linearity_kept_ratio": (("step", "layer"), kept),
        "target_linearity_dropped_ratio": (("step", "layer"), dropped),
    })
    flags = cutoff_sensitive(ds)
    np.testing.assert_array_equal(flags.values, [[False, True, True], [False, False, False]])
    assert flags.dtype == bool
    np.testing.assert_array_equal(cutoff_sensitive(ds, margin=100).values,
                                  [[False, True, True], [False, True, False]])


def _tl_records_reference(h, y, gram, options) -> dict[str, float]:
    """lstsq and the SVD of the features (no package kernel)."""
    sv = np.linalg.svd(h, compute_uv=False)
    rank = int((sv > 1e-6 * sv[0]).sum())
    return {"target_linearity": _tl_lstsq(h, y), "target_linearity_rank": rank,
            "target_linearity_n_features": h.shape[1],
            "target_linearity_kept_ratio": sv[rank - 1] / sv[0],
            "target_linearity_dual": float(len(h) < h.shape[1] + y.shape[1] + 1)}


def test_store_path_uses_the_dual_form_for_layers_wider_than_the_probe():
    # 12 samples, 4 classes: the 30-wide layer is solved in the dual form, the others primal
    tester = MetricTester(get_spec("tl"), _tl_records_reference, n=12, widths=(5, 3, 30),
                          rtol=1e-6, atol=1e-10)
    tester.check_store_path()


def test_each_layer_is_computed_at_its_own_size():
    from flq_audit.metrics import layer_moments
    from tests._helpers.metric_tester import store_like

    store = store_like(np.random.default_rng(1), n=12, widths=(5, 3, 30))
    k = store.y.shape[1]
    primal = layer_moments(store.ds)
    assert [m.shape[1:] for m in primal] == [(w + k + 1, w + k + 1) for w in (5, 3, 30)]
    mixed = layer_moments(store.ds, dual=True)
    assert [m.shape[1:] for m in mixed] == [(10, 10), (8, 8), (12, 12)]
    assert [mixed.is_dual(j) for j in range(3)] == [False, False, True]
    h = store.acts[0, 2, :, :30]
    np.testing.assert_allclose(mixed.per_layer[2][0].values, h @ h.T, rtol=1e-12)
    np.testing.assert_allclose(primal.sel(layer="layer0")[0].values,
                               _moments_update(store.acts[0, 0, :, :5], store.y), rtol=1e-12)
