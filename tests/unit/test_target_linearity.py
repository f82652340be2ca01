"""Target Linearity kernels (docs/concepts.md#target-linearity).

TL = 1 − ‖Y_c − Ŷ‖²_F / ‖Y_c‖²_F with Y_c the column-centred targets and
Ŷ = H (HᵀH + λI)⁺ HᵀY_c: no intercept, H not centred. Every expected value comes from a
closed form or an independent computation (numpy lstsq/solve, scikit-learn), in float64.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.decomposition import PCA
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.metrics import r2_score

import flq_audit.metrics
from flq_audit.errors import MetricError
from flq_audit.metrics import target_linearity, target_linearity_dataset
from flq_audit.metrics._kernels.moments import Moments, _moments_update
from flq_audit.metrics._kernels.target_linearity import _target_linearity_compute
from tests._helpers.metric_tester import DONE, store_like

HYPOTHESIS = settings(max_examples=25, deadline=None, database=None, derandomize=True)


# ---------------------------------------------------------------- independent references


def _center(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    return y - y.mean(axis=0)


def _score(yc: np.ndarray, pred: np.ndarray) -> float:
    return 1.0 - float(((yc - pred) ** 2).sum()) / float((yc**2).sum())


def tl_lstsq(h: np.ndarray, y: np.ndarray) -> float:
    """No-intercept least squares on the raw features (SVD-based gelsd)."""
    yc = _center(y)
    beta = np.linalg.lstsq(h, yc, rcond=None)[0]
    return _score(yc, h @ beta)


def tl_sklearn(h: np.ndarray, y: np.ndarray) -> float:
    yc = _center(y)
    pred = LinearRegression(fit_intercept=False).fit(h, yc).predict(h).reshape(yc.shape)
    return float(r2_score(yc, pred, multioutput="variance_weighted"))


def tl_ridge_solve(h: np.ndarray, y: np.ndarray, lam: float) -> float:
    yc = _center(y)
    beta = np.linalg.solve(h.T @ h + lam * np.eye(h.shape[1]), h.T @ yc)
    return _score(yc, h @ beta)


def tl_woodbury(h: np.ndarray, y: np.ndarray, lam: float) -> float:
    """‖Y_c − Ŷ_λ‖² = λ² tr(Y_cᵀ (λI + HHᵀ)⁻² Y_c), with the N × N kernel HHᵀ."""
    yc = _center(y)
    z = np.linalg.solve(lam * np.eye(h.shape[0]) + h @ h.T, yc)
    return 1.0 - lam**2 * float((z**2).sum()) / float((yc**2).sum())


def tl_reference_float32(h: np.ndarray, y: np.ndarray) -> float:
    """The reference recipe (§4.3): float32, explicit inverse of HᵀH, absolute jitter on failure."""
    h32 = h.astype(np.float32)
    yc = _center(y).astype(np.float32)
    g = h32.T @ h32
    try:
        g_inv = np.linalg.inv(g)
    except np.linalg.LinAlgError:
        g_inv = np.linalg.inv(g + np.float32(1e-5) * np.eye(g.shape[0], dtype=np.float32))
    resid = yc - h32 @ (g_inv @ (h32.T @ yc))
    return 1.0 - float((resid**2).sum()) / float((yc**2).sum())


def compute(h, y, **kw) -> tuple[float, int, int]:
    """``(tl, rank, n_features_used)`` from one-shot moments."""
    h = np.asarray(h, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(len(h), -1)
    m = Moments.from_matrix(_moments_update(h, y), h.shape[1], y.shape[1])
    return _target_linearity_compute(m, **kw)


def one_hot(rng: np.random.Generator, n: int, c: int) -> np.ndarray:
    labels = rng.integers(0, c, n)
    labels[:c] = np.arange(c)  # every class present
    return np.eye(c)[rng.permutation(labels)]


def targets(rng: np.random.Generator, n: int, k: int, kind: str) -> np.ndarray:
    if kind == "onehot":
        return one_hot(rng, n, max(k, 2))
    return rng.normal(size=(n, k)) * rng.uniform(0.5, 3.0, size=k) + rng.normal(size=k)


def test_public_name_is_the_function():
    # No submodule may shadow the public functions of ``flq_audit.metrics``.
    assert callable(flq_audit.metrics.target_linearity)
    assert flq_audit.metrics.target_linearity is target_linearity
    assert callable(flq_audit.metrics.surrogate)


# ---------------------------------------------------------------- 1. independent computation


@HYPOTHESIS
@given(
    n=st.integers(4, 60), d=st.integers(1, 12), k=st.integers(1, 4),
    kind=st.sampled_from(["onehot", "continuous"]), offset=st.floats(-3, 3),
    seed=st.integers(0, 2**16),
)
def test_matches_sklearn_and_lstsq(n, d, k, kind, offset, seed):
    rng = np.random.default_rng(seed)
    y = targets(rng, n, k, kind)
    # features partly explained by the targets, not centred
    h = y @ rng.normal(size=(y.shape[1], d)) + rng.normal(size=(n, d)) + offset
    tl = target_linearity(h, y)
    assert tl == pytest.approx(tl_lstsq(h, y), abs=1e-9)
    assert tl == pytest.approx(tl_sklearn(h, y), abs=1e-9)
    assert -1e-9 <= tl <= 1 + 1e-9


@pytest.mark.parametrize(("n", "d", "c"), [(200, 16, 10), (500, 32, 3), (60, 5, 2)])
def test_one_hot_classes_match_sklearn(n, d, c):
    rng = np.random.default_rng(n + d + c)
    y = one_hot(rng, n, c)
    h = np.maximum(y @ rng.normal(size=(c, d)) + rng.normal(size=(n, d)), 0)  # ReLU-like
    assert target_linearity(h, y) == pytest.approx(tl_sklearn(h, y), abs=1e-10)


def test_one_dimensional_targets():
    rng = np.random.default_rng(5)
    h = rng.normal(size=(50, 4))
    y = h[:, 0] + rng.normal(size=50)
    assert target_linearity(h, y) == pytest.approx(tl_lstsq(h, y[:, None]), abs=1e-12)
    assert target_linearity(h, y) == pytest.approx(target_linearity(h, y[:, None]), abs=1e-15)


# ---------------------------------------------------------------- 2. closed forms (§10.4)


def test_centred_targets_in_span_give_one():
    rng = np.random.default_rng(0)
    n, d = 120, 6
    y = rng.normal(size=(n, 3)) + 5.0
    yc = _center(y)
    # span(H) ⊇ span(Y_c), mixed by an invertible matrix, plus unrelated columns
    h = np.hstack([yc, rng.normal(size=(n, d - 3))]) @ rng.normal(size=(d, d))
    assert target_linearity(h, y) == pytest.approx(1.0, abs=1e-10)


def test_features_orthogonal_to_centred_targets_give_zero():
    rng = np.random.default_rng(1)
    n, d = 100, 7
    y = one_hot(rng, n, 4)
    yc = _center(y)
    h0 = rng.normal(size=(n, d)) + 2.0
    h = h0 - yc @ np.linalg.lstsq(yc, h0, rcond=None)[0]  # HᵀY_c = 0
    np.testing.assert_allclose(h.T @ yc, 0, atol=1e-10)
    assert target_linearity(h, y) == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize(("n", "d"), [(5, 5), (8, 20), (30, 31)])
def test_full_row_rank_gives_one(n, d):
    rng = np.random.default_rng(n * d)
    h = rng.normal(size=(n, d))
    y = rng.normal(size=(n, 2))
    assert target_linearity(h, y) == pytest.approx(1.0, abs=1e-9)


def test_class_means_give_one_and_noise_lowers_tl_monotonically():
    rng = np.random.default_rng(2)
    n, c, d = 300, 4, 10
    y = one_hot(rng, n, c)
    means = rng.normal(size=(c, d))  # linearly independent class means (rank c)
    noise = rng.normal(size=(n, d))
    tls = [target_linearity(y @ means + s * noise, y) for s in (0, 0.1, 0.3, 1, 3, 10, 30)]
    assert tls[0] == pytest.approx(1.0, abs=1e-10)
    assert all(a > b for a, b in pairwise(tls)), tls
    assert tls[-1] < 0.1


def test_independent_isotropic_features_average_chance_floor():
    n, d, seeds = 400, 16, 30
    rng = np.random.default_rng(3)
    y = one_hot(rng, n, 5)
    tls = np.array([
        target_linearity(np.random.default_rng(100 + s).normal(size=(n, d)), y)
        for s in range(seeds)
    ])
    sem = tls.std(ddof=1) / np.sqrt(seeds)
    assert abs(tls.mean() - d / n) < 4 * sem, (tls.mean(), d / n, sem)


# ---------------------------------------------------------------- 3. invariances (§10.5)


@pytest.fixture
def problem():
    rng = np.random.default_rng(7)
    n, d, k = 80, 6, 3
    y = rng.normal(size=(n, k)) + 1.0
    h = y @ rng.normal(size=(k, d)) + 0.8 * rng.normal(size=(n, d)) + 0.5
    return rng, h, y


def _orthogonal(rng: np.random.Generator, m: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(m, m)))
    return q * np.sign(np.diag(r))


def test_invariances_without_ridge(problem):
    rng, h, y = problem
    n, d = h.shape
    base = target_linearity(h, y)
    assert 0.2 < base < 0.99
    a = rng.normal(size=(d, d))
    assert np.linalg.cond(a) < 1e4
    perm = rng.permutation(n)
    cases = {
        "H A": (h @ a, y),
        "c Y": (h, -3.7 * y),
        "Y Q": (h, y @ _orthogonal(rng, y.shape[1])),
        "permutation": (h[perm], y[perm]),
        "duplicated columns": (np.hstack([h, h[:, :3], 2 * h[:, [1]]]), y),
    }
    for name, (h2, y2) in cases.items():
        assert target_linearity(h2, y2) == pytest.approx(base, abs=1e-10), name


def test_constant_column_and_centring_change_tl():
    """Closed form, d = 1: h = y_c + c·1 ⇒ TL = ‖y_c‖² / (‖y_c‖² + N c²) < 1; adding an
    intercept column or centring h recovers y_c exactly ⇒ TL = 1."""
    rng = np.random.default_rng(8)
    n, c = 50, 0.6
    y = rng.normal(size=n) + 4.0
    yc = y - y.mean()
    h = (yc + c)[:, None]
    expected = (yc @ yc) / (yc @ yc + n * c**2)
    assert target_linearity(h, y) == pytest.approx(expected, abs=1e-12)
    assert expected < 0.9
    assert target_linearity(np.hstack([h, np.ones((n, 1))]), y) == pytest.approx(1.0, abs=1e-10)
    assert target_linearity(h - h.mean(axis=0), y) == pytest.approx(1.0, abs=1e-10)


def test_constant_column_changes_tl_in_general(problem):
    _, h, y = problem
    base = target_linearity(h, y)
    with_const = target_linearity(np.hstack([h, np.ones((len(h), 1))]), y)
    centred = target_linearity(h - h.mean(axis=0), y)
    assert with_const == pytest.approx(tl_lstsq(np.hstack([h, np.ones((len(h), 1))]), y), abs=1e-10)
    assert abs(with_const - base) > 1e-3
    assert abs(centred - base) > 1e-3


def test_ridge_invariant_to_orthogonal_features_only(problem):
    rng, h, y = problem
    lam = 5.0
    base = target_linearity(h, y, ridge=lam)
    q = _orthogonal(rng, h.shape[1])
    assert target_linearity(h @ q, y, ridge=lam) == pytest.approx(base, abs=1e-10)
    a = np.diag(np.linspace(0.1, 3.0, h.shape[1])) @ q
    assert abs(target_linearity(h @ a, y, ridge=lam) - base) > 1e-3
    # with λ = 0 the same A changes nothing
    assert target_linearity(h @ a, y) == pytest.approx(target_linearity(h, y), abs=1e-10)


# ---------------------------------------------------------------- 4. ridge


@pytest.mark.parametrize("lam", [1e-3, 0.5, 10.0, 1e3])
def test_ridge_matches_direct_solve_and_sklearn(problem, lam):
    _, h, y = problem
    tl = target_linearity(h, y, ridge=lam)
    assert tl == pytest.approx(tl_ridge_solve(h, y, lam), abs=1e-10)
    yc = _center(y)
    pred = Ridge(alpha=lam, fit_intercept=False, solver="svd").fit(h, yc).predict(h)
    assert tl == pytest.approx(_score(yc, pred), abs=1e-9)


@pytest.mark.parametrize("lam", [0.01, 1.0, 30.0])
def test_ridge_woodbury(lam):
    rng = np.random.default_rng(9)
    n, d = 25, 8
    y = one_hot(rng, n, 3)
    h = y @ rng.normal(size=(3, d)) + rng.normal(size=(n, d)) + 1.0
    assert target_linearity(h, y, ridge=lam) == pytest.approx(tl_woodbury(h, y, lam), abs=1e-10)


def test_ridge_woodbury_wide_features():
    rng = np.random.default_rng(10)
    n, d = 12, 30  # N < d: OLS would interpolate (TL = 1), ridge does not
    h = rng.normal(size=(n, d))
    y = rng.normal(size=(n, 2))
    tl = target_linearity(h, y, ridge=2.0)
    assert tl == pytest.approx(tl_woodbury(h, y, 2.0), abs=1e-10)
    assert tl < 1 - 1e-3


def test_ridge_decreases_tl(problem):
    _, h, y = problem
    lams = [0.0, 1e-4, 1e-2, 1.0, 10.0, 100.0, 1e4, 1e6]
    tls = [target_linearity(h, y, ridge=lam) for lam in lams]
    assert all(a > b for a, b in pairwise(tls)), tls
    assert tls[0] == pytest.approx(tl_lstsq(h, y), abs=1e-10)
    assert 0 <= tls[-1] < 0.05


def test_negative_ridge_is_rejected():
    ds = store_like(np.random.default_rng(0)).ds
    with pytest.raises(MetricError):
        target_linearity_dataset(ds, ridge=-1.0)


# ---------------------------------------------------------------- 5. ill-conditioning (§8.1, §10.12)


def _ill_conditioned(seed: int, n: int = 400, d: int = 16, k: int = 3):
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.normal(size=(n, d)))
    v = _orthogonal(rng, d)
    h = (u * np.logspace(0, -5, d)) @ v.T  # cond(HᵀH) = 1e10
    y = 0.2 * u @ rng.normal(size=(d, k)) + rng.normal(size=(n, k))  # small true TL
    return h, y


@pytest.mark.parametrize("seed", [0, 4])
def test_ill_conditioned_matches_svd(seed):
    h, y = _ill_conditioned(seed)
    assert np.linalg.cond(h.T @ h) == pytest.approx(1e10, rel=0.05)
    truth = tl_lstsq(h, y)
    tl, rank, used = compute(h, y)
    assert tl == pytest.approx(truth, abs=1e-6)
    assert tl >= 0
    assert rank == used == h.shape[1]


def test_ill_conditioned_reference_recipe_is_off():
    # §8.1: the float32 explicit inverse is silently wrong (it can even read negative); the
    # float64 kernel stays within 1e-6 of the SVD answer on the same problems.
    truth = [tl_lstsq(*_ill_conditioned(seed)) for seed in range(6)]
    reference = [tl_reference_float32(*_ill_conditioned(seed)) for seed in range(6)]
    kernel = [target_linearity(*_ill_conditioned(seed)) for seed in range(6)]
    assert max(abs(r - t) for r, t in zip(reference, truth, strict=True)) > 5e-3
    assert max(abs(k - t) for k, t in zip(kernel, truth, strict=True)) < 1e-6
    assert min(kernel) > 0


def _collapsed(seed: int, n: int = 300, c: int = 5, d: int = 32):
    rng = np.random.default_rng(seed)
    y = one_hot(rng, n, c)
    return y @ rng.normal(size=(c, d)), y  # rank c < d; Y_c ∈ span(H) since 1 ∈ span(Y)


@pytest.mark.parametrize("seed", [0, 1, 3])
def test_rank_deficient_features(seed):
    h, y = _collapsed(seed)
    tl, rank, used = compute(h, y)
    assert tl == pytest.approx(1.0, abs=1e-10)
    assert rank == 5
    assert used == 32
    assert tl_lstsq(h, y) == pytest.approx(1.0, abs=1e-10)


def test_rank_deficient_reference_recipe_is_far_off():
    # Documents why the kernel exists: the float32 inverse of a singular HᵀH is garbage.
    errors = [abs(tl_reference_float32(*_collapsed(seed)) - 1.0) for seed in range(4)]
    assert max(errors) > 0.1, errors
    assert all(abs(target_linearity(*_collapsed(seed)) - 1.0) < 1e-10 for seed in range(4))


# ---------------------------------------------------------------- 6. streaming = one-shot (§10.7)


@HYPOTHESIS
@given(data=st.data())
def test_streaming_equals_one_shot(data):
    n = data.draw(st.integers(3, 80), label="n")
    d = data.draw(st.integers(1, 10), label="d")
    kind = data.draw(st.sampled_from(["onehot", "continuous"]), label="kind")
    lam = data.draw(st.sampled_from([0.0, 0.3]), label="ridge")
    pad = data.draw(st.integers(0, 4), label="pad")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    y = targets(rng, n, 2, kind)
    h = y @ rng.normal(size=(y.shape[1], d)) + rng.normal(size=(n, d)) + 1.0
    cuts = sorted(data.draw(st.lists(st.integers(1, n - 1), max_size=8), label="cuts"))
    bounds = [0, *cuts, n]
    blocks = list(pairwise(bounds))
    order = data.draw(st.permutations(range(len(blocks))), label="order")
    size = d + pad
    total = np.zeros((size + y.shape[1] + 1,) * 2)
    for i in order:
        a, b = blocks[i]
        total += _moments_update(h[a:b], y[a:b], size=size)
    tl, rank, used = _target_linearity_compute(
        Moments.from_matrix(total, d, y.shape[1]), ridge=lam
    )
    assert tl == pytest.approx(target_linearity(h, y, ridge=lam), abs=1e-10)
    assert used == d
    assert rank == min(n, d)


@pytest.mark.parametrize("pad", [1, 7])
def test_padding_changes_nothing(problem, pad):
    _, h, y = problem
    d, k = h.shape[1], y.shape[1]
    padded = Moments.from_matrix(_moments_update(h, y, size=d + pad), d, k)
    for kw in ({}, {"ridge": 2.0}, {"pca": 3, "pca_threshold": 4}):
        assert _target_linearity_compute(padded, **kw) == pytest.approx(compute(h, y, **kw), abs=1e-12)


# ---------------------------------------------------------------- 7. PCA option (§4.4, §8.3)


def test_pca_matches_independent_projection():
    rng = np.random.default_rng(11)
    n, d, q, c = 150, 20, 5, 4
    y = one_hot(rng, n, c)
    scales = np.linspace(3.0, 0.2, d)  # distinct variances: a well-defined top-q subspace
    h = (y @ rng.normal(size=(c, d)) + rng.normal(size=(n, d))) * scales + 2.0  # not centred
    tl, rank, used = compute(h, y, pca=q, pca_threshold=10)
    basis = PCA(n_components=q, svd_solver="full").fit(h).components_.T  # centred fit
    assert tl == pytest.approx(tl_lstsq(h @ basis, y), abs=1e-9)  # uncentred projection
    # the same via an explicit eigendecomposition of the centred covariance
    w, v = np.linalg.eigh(np.cov(h, rowvar=False))
    assert tl == pytest.approx(tl_lstsq(h @ v[:, np.argsort(w)[::-1][:q]], y), abs=1e-9)
    assert used == q
    assert rank == q
    # the convention matters: projecting the centred features gives another value
    assert abs(tl_lstsq((h - h.mean(axis=0)) @ basis, y) - tl) > 1e-3
    assert target_linearity(h, y, pca=q, pca_threshold=10) == pytest.approx(tl, abs=1e-15)


@pytest.mark.parametrize("threshold", [20, 1000])
def test_pca_below_threshold_changes_nothing(problem, threshold):
    _, h, y = problem
    h = np.hstack([h] * 4)[:, :20] + np.random.default_rng(12).normal(size=(len(h), 20))
    plain = compute(h, y)
    assert compute(h, y, pca=3, pca_threshold=threshold) == plain
    assert plain[2] == 20
    assert plain[0] == pytest.approx(tl_lstsq(h, y), abs=1e-10)


# ---------------------------------------------------------------- 8. the lazy store path


# one chunking after another against the definition, undone steps NaN: the MetricTester
# (tests/unit/test_metric_registry.py) runs that for every registered metric


def test_dataset_with_ridge_and_pca():
    store = store_like(np.random.default_rng(14))
    ds, acts, y, done, widths = store.ds, store.acts, store.y, DONE, store.widths
    kw = {"ridge": 0.5, "pca": 2, "pca_threshold": 4}
    out = target_linearity_dataset(ds.chunk({"step": 1, "layer": 1, "sample": 7}), **kw).compute()
    for s in np.flatnonzero(done):
        for j, w in enumerate(widths):
            expected = target_linearity(acts[s, j, :, :w], y, **kw)
            got = float(out["target_linearity"].isel(step=s, layer=j))
            assert got == pytest.approx(expected, abs=1e-10), (s, j)
            assert float(out["n_features"].isel(step=s, layer=j)) == (2 if w > 4 else w)


def test_dataset_through_zarr(tmp_path):
    store = store_like(np.random.default_rng(15))
    path = tmp_path / "s.zarr"
    store.ds.chunk({"step": 1, "layer": 1, "sample": 7}).to_zarr(path, zarr_format=3)
    stored = xr.open_zarr(path)
    assert stored["activations"].chunks[2][0] == 7
    out = target_linearity_dataset(stored).compute()
    for s in range(len(DONE)):
        for j, w in enumerate(store.widths):
            got = float(out["target_linearity"].isel(step=s, layer=j))
            if not DONE[s]:
                assert np.isnan(got)
                continue
            assert got == pytest.approx(target_linearity(store.acts[s, j, :, :w], store.y), abs=1e-10)
            assert float(out["chance_floor"].isel(step=s, layer=j)) == pytest.approx(
                min(w, len(store.y)) / len(store.y), rel=1e-15)


# ---------------------------------------------------------------- reference compatibility (§10.11)


def _tl_with(h, y, **kwargs):
    from flq_audit.metrics._kernels.moments import Moments, _moments_update
    from flq_audit.metrics._kernels.target_linearity import _target_linearity_compute

    m = Moments.from_matrix(_moments_update(h, y), h.shape[1], y.shape[1])
    return _target_linearity_compute(m, **kwargs)[0]


def test_row_denominator_matches_the_reference_formula():
    rng = np.random.default_rng(11)
    h = rng.normal(size=(120, 6))
    onehot = np.eye(4)[rng.integers(0, 4, 120)]
    # centred one-hot rows sum to 0: both denominators agree
    assert _tl_with(h, onehot, denominator="row") == pytest.approx(_tl_with(h, onehot), abs=1e-12)
    # continuous targets with per-row offsets: the reference's row-centred denominator
    y = rng.normal(size=(120, 5)) + rng.normal(size=(120, 1)) * 3.0
    yc = y - y.mean(0)
    fit = np.linalg.lstsq(h, yc, rcond=None)[0]
    residual = ((yc - h @ fit) ** 2).sum()
    reference = 1 - residual / ((yc - yc.mean(1, keepdims=True)) ** 2).sum()
    got = _tl_with(h, y, denominator="row")
    assert got == pytest.approx(reference, abs=1e-10)
    assert got < _tl_with(h, y) - 1e-3  # smaller denominator, lower TL


def test_row_denominator_with_one_column_is_the_column_one():
    rng = np.random.default_rng(12)
    h, y = rng.normal(size=(80, 4)), rng.normal(size=(80, 1))
    assert _tl_with(h, y, denominator="row") == pytest.approx(_tl_with(h, y), abs=1e-14)


def test_every_pca_threshold_default_is_the_one_constant():
    """A changed ``DEFAULT_PCA_THRESHOLD`` moves every default: the options, the kernels, the
    API and ``metrics --pca-threshold`` (no copy of its value anywhere)."""
    import subprocess
    import sys

    code = (
        "import inspect, flq_audit.constants as c\n"
        "c.DEFAULT_PCA_THRESHOLD = 77\n"
        "from flq_audit import api\n"
        "from flq_audit.cli._store import metrics_command\n"
        "from flq_audit.metrics import TLOptions\n"
        "from flq_audit.metrics._kernels import target_linearity as k\n"
        "from flq_audit.metrics._target_linearity import target_linearity_dataset\n"
        "funcs = [api.compute_metrics, k.target_linearity, k.fit_target_linearity,\n"
        "         target_linearity_dataset, metrics_command]\n"
        "defaults = [inspect.signature(f).parameters['pca_threshold'].default for f in funcs]\n"
        "print([TLOptions().pca_threshold, TLOptions.from_attrs({}).pca_threshold,\n"
        "       TLOptions(pca=8).suffix] + defaults)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[77, 77, '__pca8', 77, 77, 77, 77, 77]"
