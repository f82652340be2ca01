"""Neural collapse NC1/NC2 from streaming moments (docs/concepts.md#neural-collapse-nc).

NC1 = tr(Σ_W Σ_B⁺)/C with Σ_W = (1/N) Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ and Papyan's
unweighted Σ_B = (1/C) Σ_c (μ_c − μ_G)(μ_c − μ_G)ᵀ, μ_G the sample mean. Every expected value
comes from a closed form or a direct numpy computation over the samples (class means, scatter
matrices, ``np.linalg.pinv``), never from the moments.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
import xarray as xr

import flq_audit.metrics
from flq_audit.metrics import collapse_dataset, neural_collapse
from flq_audit.metrics._kernels.collapse import CollapseResult, _collapse_compute
from flq_audit.metrics._kernels.moments import Moments, _moments_update
from tests._helpers.metric_tester import DONE, store_like

FIELDS = ("nc1", "nc2_equinorm", "nc2_equiangularity", "nc2_etf_error")


# ---------------------------------------------------------------- independent reference


def reference(h: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """NC1/NC2 straight from the samples, over the classes that occur in ``labels``."""
    h = np.asarray(h, dtype=np.float64)
    classes = np.unique(labels)
    c, n = len(classes), len(h)
    means = np.stack([h[labels == k].mean(axis=0) for k in classes])  # C × d
    mu_g = h.mean(axis=0)
    sigma_w = sum((h[labels == k] - means[i]).T @ (h[labels == k] - means[i])
                  for i, k in enumerate(classes)) / n
    centred = means - mu_g
    sigma_b = sum(np.outer(v, v) for v in centred) / c
    nc1 = np.trace(sigma_w @ np.linalg.pinv(sigma_b, rcond=1e-10, hermitian=True)) / c
    norms = np.array([np.linalg.norm(v) for v in centred])
    cosines = [centred[a] @ centred[b] / (norms[a] * norms[b])
               for a in range(c) for b in range(c) if a != b]
    gram = centred @ centred.T
    etf = np.eye(c) - np.ones((c, c)) / c
    return {
        "nc1": float(nc1),
        "nc2_equinorm": float(np.std(norms) / np.mean(norms)),
        "nc2_equiangularity": float(np.mean([abs(x + 1 / (c - 1)) for x in cosines])),
        "nc2_etf_error": float(np.linalg.norm(gram / np.linalg.norm(gram)
                                              - etf / np.linalg.norm(etf))),
    }


def assert_matches(result: CollapseResult, expected: dict[str, float], rel: float = 1e-8):
    for name in FIELDS:
        assert getattr(result, name) == pytest.approx(expected[name], rel=rel, abs=1e-10), name


def simplex_etf(c: int, d: int, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    """``c`` centred simplex-ETF vectors (rows) embedded in R^d by a random isometry."""
    q, _ = np.linalg.qr(rng.normal(size=(d, c)))
    return scale * (np.eye(c) - 1.0 / c) @ q.T


def gaussian_classes(rng, n: int, d: int, c: int, sigma: float = 1.0, offset: float = 0.0):
    labels = np.concatenate([np.arange(c), rng.integers(0, c, n - c)])  # every class present
    rng.shuffle(labels)
    means = rng.normal(size=(c, d)) * 2
    return means[labels] + sigma * rng.normal(size=(n, d)) + offset, labels


def test_public_names():
    assert flq_audit.metrics.neural_collapse is neural_collapse
    assert flq_audit.metrics.collapse_dataset is collapse_dataset
    assert "nc" in flq_audit.metrics.METRICS


# ---------------------------------------------------------------- 1. independent computation


@pytest.mark.parametrize(
    ("n", "d", "c", "offset"),
    [(200, 6, 4, 0.0), (150, 20, 5, 3.0), (90, 3, 6, 0.0), (60, 2, 3, -5.0), (300, 40, 10, 1.0)],
    ids=["d>C", "wide+offset", "d<C-1", "tiny", "ten-classes"],
)
def test_matches_direct_computation(n, d, c, offset):
    rng = np.random.default_rng(n + d + c)
    h, labels = gaussian_classes(rng, n, d, c, offset=offset)
    r = neural_collapse(h, labels, c)
    assert r.n_classes == c and r.excluded == ()
    assert_matches(r, reference(h, labels))


def test_imbalanced_classes_match_direct_computation():
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(4), [5, 20, 60, 115])
    h = rng.normal(size=(4, 7))[labels] * 3 + rng.normal(size=(200, 7))
    assert_matches(neural_collapse(h, labels, 4), reference(h, labels))


def test_float32_features_are_computed_in_float64():
    rng = np.random.default_rng(4)
    h, labels = gaussian_classes(rng, 120, 8, 3)
    h32 = h.astype(np.float32)
    assert_matches(neural_collapse(h32, labels, 3), reference(h32.astype(np.float64), labels))


# ---------------------------------------------------------------- 2. closed forms


@pytest.mark.parametrize(("c", "d", "scale", "offset"), [(3, 3, 1.0, 0.0), (5, 12, 7.0, 2.5),
                                                          (10, 16, 0.01, -1.0)])
def test_features_at_simplex_etf_class_means_are_fully_collapsed(c, d, scale, offset):
    rng = np.random.default_rng(c)
    labels = np.repeat(np.arange(c), 6)
    h = simplex_etf(c, d, rng, scale)[labels] + offset
    r = neural_collapse(h, labels, c)
    for name in FIELDS:
        assert abs(getattr(r, name)) < 1e-9, name
    assert r.n_classes == c


def test_nc1_of_class_centred_noise_is_quadratic_in_sigma():
    """Noise with zero mean in every class leaves μ_c fixed, so Σ_W ∝ σ² and NC1 = σ² NC1(1)."""
    rng = np.random.default_rng(5)
    c, d = 4, 9
    labels = np.repeat(np.arange(c), 25)
    noise = rng.normal(size=(len(labels), d))
    for k in range(c):
        noise[labels == k] -= noise[labels == k].mean(axis=0)
    etf = simplex_etf(c, d, rng)[labels]
    base = neural_collapse(etf + noise, labels, c).nc1
    assert base == pytest.approx(reference(etf + noise, labels)["nc1"], rel=1e-9)
    for sigma in (0.01, 0.3, 2.0):
        r = neural_collapse(etf + sigma * noise, labels, c)
        assert r.nc1 == pytest.approx(sigma**2 * base, rel=1e-8)
        # the class means are untouched: NC2 stays exactly at the ETF
        assert abs(r.nc2_equinorm) < 1e-9 and abs(r.nc2_etf_error) < 1e-9


def test_nc1_grows_monotonically_with_within_class_noise():
    rng = np.random.default_rng(6)
    c, d = 5, 10
    labels = np.repeat(np.arange(c), 40)
    etf = simplex_etf(c, d, rng)[labels]
    noise = rng.normal(size=etf.shape)
    values = [neural_collapse(etf + s * noise, labels, c).nc1 for s in (0.0, 0.05, 0.2, 0.5, 1.0, 3.0)]
    assert values[0] < 1e-12
    assert all(a < b for a, b in pairwise(values)), values


def test_two_classes_closed_form():
    """C = 2: the weighted μ_G puts μ_1 − μ_G and μ_2 − μ_G on opposite rays, so the
    equiangularity is 0 and equinorm = |n_1 − n_2| / N; the ETF error is 0 iff balanced."""
    rng = np.random.default_rng(7)
    labels = np.repeat([0, 1], [30, 90])
    h = rng.normal(size=(2, 5))[labels] + rng.normal(size=(120, 5))
    r = neural_collapse(h, labels, 2)
    assert abs(r.nc2_equiangularity) < 1e-12
    assert r.nc2_equinorm == pytest.approx(60 / 120, rel=1e-10)
    assert r.nc2_etf_error > 0.1
    balanced = np.repeat([0, 1], 60)
    h = rng.normal(size=(2, 5))[balanced] + rng.normal(size=(120, 5))
    b = neural_collapse(h, balanced, 2)
    assert abs(b.nc2_equinorm) < 1e-12 and abs(b.nc2_etf_error) < 1e-12


def test_invariant_to_rotation_translation_and_scale():
    rng = np.random.default_rng(8)
    h, labels = gaussian_classes(rng, 150, 6, 4)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    base = neural_collapse(h, labels, 4)
    moved = neural_collapse(3.0 * h @ q + rng.normal(size=6) * 10, labels, 4)
    for name in FIELDS:
        assert getattr(moved, name) == pytest.approx(getattr(base, name), rel=1e-8), name


# ---------------------------------------------------------------- 3. streaming = one shot


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streaming_block_moments_in_any_order_equal_one_shot(seed):
    rng = np.random.default_rng(seed)
    c, d, n = 4, 7, 160
    h, labels = gaussian_classes(rng, n, d, c, offset=1.5)
    y = np.eye(c)[labels]
    cuts = np.sort(rng.choice(np.arange(1, n), size=5, replace=False))
    blocks = [_moments_update(hb, yb, size=d + 3)  # padded, like the store
              for hb, yb in zip(np.split(h, cuts), np.split(y, cuts), strict=True)]
    blocks.append(_moments_update(np.zeros((0, d)), np.zeros((0, c)), size=d + 3))  # empty block
    total = sum(blocks[i] for i in rng.permutation(len(blocks)))
    streamed = _collapse_compute(Moments.from_matrix(total, d, c))
    one_shot = neural_collapse(h, labels, c)
    for name in FIELDS:
        assert getattr(streamed, name) == pytest.approx(getattr(one_shot, name), rel=1e-9), name
    assert_matches(streamed, reference(h, labels))


def test_sample_order_does_not_matter():
    rng = np.random.default_rng(9)
    h, labels = gaussian_classes(rng, 100, 5, 3)
    perm = rng.permutation(100)
    a, b = neural_collapse(h, labels, 3), neural_collapse(h[perm], labels[perm], 3)
    for name in FIELDS:
        assert getattr(a, name) == pytest.approx(getattr(b, name), rel=1e-10)


# ---------------------------------------------------------------- 4. absent classes, undefined cases


def test_absent_classes_are_excluded_and_recorded():
    rng = np.random.default_rng(10)
    h, dense = gaussian_classes(rng, 120, 6, 3)
    sparse = np.array([0, 1, 3])[dense]  # classes 2 and 4 of 5 never occur
    r = neural_collapse(h, sparse, 5)
    assert r.n_classes == 3 and r.excluded == (2, 4)
    same = neural_collapse(h, dense, 3)
    for name in FIELDS:
        assert getattr(r, name) == pytest.approx(getattr(same, name), rel=1e-12), name
    assert_matches(r, reference(h, sparse))


def test_undefined_cases_are_nan():
    rng = np.random.default_rng(11)
    h = rng.normal(size=(30, 4))
    one_class = neural_collapse(h, np.zeros(30, dtype=int), 3)
    assert one_class.n_classes == 1 and one_class.excluded == (1, 2)
    assert all(np.isnan(getattr(one_class, f)) for f in FIELDS)
    same_means = neural_collapse(np.ones((30, 4)), np.arange(30) % 3, 3)  # Σ_B = 0
    assert np.isnan(same_means.nc1) and np.isnan(same_means.nc2_etf_error)
    continuous = Moments.from_matrix(_moments_update(h, rng.normal(size=(30, 2))), 4, 2)
    r = _collapse_compute(continuous)
    assert r.n_classes == 0 and all(np.isnan(getattr(r, f)) for f in FIELDS)
    multi_hot = Moments.from_matrix(_moments_update(h, np.ones((30, 2))), 4, 2)
    assert np.isnan(_collapse_compute(multi_hot).nc1)


def test_bad_labels_are_rejected():
    with pytest.raises(ValueError, match="labels"):
        neural_collapse(np.zeros((3, 2)), np.array([0, 1, 3]), 3)
    with pytest.raises(ValueError, match="labels"):
        neural_collapse(np.zeros((3, 2)), np.array([0.0, 1.0, 1.0]), 3)
    with pytest.raises(ValueError, match="shape"):
        neural_collapse(np.zeros((3, 2)), np.array([0, 1]), 3)


# ---------------------------------------------------------------- 5. the lazy store path


def _check_against_samples(out: xr.Dataset, store, c: int) -> None:
    labels = store.y.argmax(axis=1)
    for s in range(len(DONE)):
        for j, w in enumerate(store.widths):
            row = out.isel(step=s, layer=j)
            if not DONE[s]:
                for name in (*FIELDS, "nc_n_classes"):
                    assert np.isnan(float(row[name])), (s, j, name)
                continue
            expected = neural_collapse(store.acts[s, j, :, :w], labels, c)
            for name in FIELDS:
                assert float(row[name]) == pytest.approx(getattr(expected, name), rel=1e-9,
                                                         abs=1e-12), (s, j, name)
            assert float(row["nc_n_classes"]) == expected.n_classes


# every chunking against Papyan's sample definitions, undone steps NaN, attributes: the
# MetricTester (tests/unit/test_metric_registry.py) runs that for every registered metric


def test_dataset_with_absent_class_and_shared_moments():
    store = store_like(np.random.default_rng(14), absent=2, kind=None)
    ds = store.ds.chunk({"step": 1, "layer": 1, "sample": 9})
    moments = flq_audit.metrics.layer_moments(ds)
    out = collapse_dataset(ds, moments=moments).compute()
    _check_against_samples(out, store, 4)
    assert out["nc1"].attrs["excluded_classes"] == [2]
    assert (out["nc_n_classes"].sel(step=[0, 20]) == 3).all()


def test_continuous_targets_give_nan():
    ds = store_like(np.random.default_rng(15), kind="continuous").ds
    out = collapse_dataset(ds.chunk({"sample": 9})).compute()
    assert out["nc1"].dims == ("step", "layer")
    for name in (*FIELDS, "nc_n_classes"):
        assert out[name].isnull().all(), name


# ---------------------------------------------------------------- 6. through the API on a real store


def test_compute_metrics_nc_on_a_real_store(tmp_path):
    from flq_audit import api
    from flq_audit.store import open_dataset
    from tests._helpers.runs import make_run

    run = make_run(tmp_path / "run", steps=(0, 10), n_samples=48)
    store = tmp_path / "s.zarr"
    api.audit(str(run), out=store)
    metrics = api.compute_metrics(store, metrics=["nc"])
    assert set(FIELDS) <= set(metrics.data_vars)

    ds = open_dataset(store)
    assert "nc1" in ds and ds["nc1"].attrs["flq_metric"] == "nc"
    labels = np.argmax(ds["targets"].values, axis=1)
    c = ds["targets"].shape[1]
    for s in range(ds.sizes["step"]):
        for j in range(ds.sizes["layer"]):
            w = int(ds["width"][j])
            expected = neural_collapse(ds["activations"][s, j, :, :w].values, labels, c)
            for name in FIELDS:
                assert float(ds[name][s, j]) == pytest.approx(getattr(expected, name), rel=1e-8,
                                                              abs=1e-12), (s, j, name)
    assert np.isfinite(ds["nc1"].values).all()
    again = api.compute_metrics(store, metrics=["nc"])  # current: read back, same values
    np.testing.assert_array_equal(again["nc1"].values, metrics["nc1"].values)


# ---------------------------------------------------------------- NC3 / NC4 (classifier layer)


def test_self_duality_and_ncc_match_direct_sample_computations():
    from flq_audit.metrics._kernels.duality import _ncc_disagreement, _self_duality
    from flq_audit.metrics._kernels.moments import Moments, _moments_update

    rng = np.random.default_rng(5)
    labels = rng.integers(0, 4, 300)
    h = rng.normal(size=(4, 6))[labels] + 0.8 * rng.normal(size=(300, 6))
    w = rng.normal(size=(4, 6))
    m = Moments.from_matrix(_moments_update(h, np.eye(4)[labels]), 6, 4)
    means = np.stack([h[labels == c].mean(0) for c in range(4)])
    centred = means - h.mean(0)
    expected = np.linalg.norm(w / np.linalg.norm(w) - centred / np.linalg.norm(centred))
    assert _self_duality(m, w) == pytest.approx(expected, rel=1e-12)
    # a classifier equal to the centred means (scaled) is perfectly self-dual
    assert _self_duality(m, 3.0 * centred) == pytest.approx(0.0, abs=1e-12)

    predictions = rng.integers(0, 4, 300)
    nearest = np.argmin(((h[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    flags = _ncc_disagreement(h, means, predictions)
    np.testing.assert_array_equal(flags, (nearest != predictions).astype(float))
    assert np.isnan(_ncc_disagreement(h, means, np.full(300, -1.0))).all()


def test_nc3_nc4_on_a_real_store(run_dir, tmp_path):
    import xarray as xr

    from flq_audit import api

    api.audit(str(run_dir), out=tmp_path / "s.zarr")
    ds = xr.open_zarr(tmp_path / "s.zarr")
    assert ds.attrs["classifier"] == "layers.2"
    result = api.compute_metrics(tmp_path / "s.zarr", metrics=["nc"])
    for step in ds.step.values:
        h = ds.activations.sel(step=step, layer="layers.2").values[:, :8].astype(np.float64)
        labels = ds.class_label.values
        present = np.unique(labels)
        means = np.full((3, 8), np.nan)
        for c in present:
            means[c] = h[labels == c].mean(0)
        dist = ((h[:, None, :] - np.nan_to_num(means, nan=1e9)[None]) ** 2).sum(-1)
        expected = (dist.argmin(1) != ds.prediction.sel(step=step).values).mean()
        assert float(result.nc4.sel(step=step)) == pytest.approx(expected, abs=1e-12)
        assert np.isfinite(float(result.nc3.sel(step=step)))
