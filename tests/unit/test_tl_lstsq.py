"""Target Linearity agrees with ``numpy.linalg.lstsq`` to 1e-12 where ``H`` is
well-conditioned for least squares, also where the normal equations (``HᵀH``, condition
number squared) would lose digits, one-shot and over a store read in sample chunks."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from flq_audit._gram_forms import FactorGram
from flq_audit.metrics import target_linearity, target_linearity_dataset

TOL = 1e-12


def tl_by_lstsq(h: np.ndarray, y: np.ndarray) -> float:
    """R² of the no-intercept least-squares fit of the column-centred targets (gelsd)."""
    yc = y - y.mean(axis=0)
    beta = np.linalg.lstsq(h, yc, rcond=None)[0]
    return 1.0 - float(((yc - h @ beta) ** 2).sum()) / float((yc**2).sum())


def conditioned(rng: np.random.Generator, n: int, d: int, condition: float) -> np.ndarray:
    """``n × d`` features whose singular values span ``condition`` (orthogonal factors)."""
    left = np.linalg.qr(rng.normal(size=(n, d)))[0]
    right = np.linalg.qr(rng.normal(size=(d, d)))[0]
    return left @ np.diag(np.logspace(0.0, -np.log10(condition), d)) @ right.T * 3.0 + 0.1


def one_hot(rng: np.random.Generator, n: int, c: int) -> np.ndarray:
    return np.eye(c)[rng.integers(0, c, n)]


@pytest.mark.parametrize("condition", [3.0, 1e2, 1e4, 1e5])
def test_tl_equals_lstsq_within_1e12(condition):
    rng = np.random.default_rng(int(condition))
    h, y = conditioned(rng, 500, 40, condition), one_hot(rng, 500, 6)
    assert abs(target_linearity(h, y) - tl_by_lstsq(h, y)) < TOL


def test_continuous_targets_and_ridge_zero_equal_lstsq():
    rng = np.random.default_rng(7)
    h = conditioned(rng, 300, 25, 1e4)
    y = h @ rng.normal(size=(25, 3)) + rng.normal(size=(300, 3)) + 5.0
    assert abs(target_linearity(h, y, form="primal") - tl_by_lstsq(h, y)) < TOL


def chunked_store(rng: np.random.Generator, n: int, widths: tuple[int, ...],
                  chunk: int) -> tuple[xr.Dataset, np.ndarray, np.ndarray]:
    steps, f = 2, max(widths)
    acts = np.zeros((steps, len(widths), n, f))
    for s in range(steps):
        for j, w in enumerate(widths):
            acts[s, j, :, :w] = conditioned(rng, n, w, 10.0 ** (2 + s + j))
    y = one_hot(rng, n, 4)
    ds = xr.Dataset(
        {"activations": (("step", "layer", "sample", "feature"), acts),
         "targets": (("sample", "target"), y, {"kind": "classes"}),
         "done": (("step",), np.ones(steps, dtype=bool))},
        coords={"step": np.arange(steps), "layer": [f"layer{j}" for j in range(len(widths))],
                "width": ("layer", np.asarray(widths, dtype=np.int64)),
                "sample": np.arange(n)})
    return ds.chunk({"sample": chunk, "step": 1, "layer": 1}), acts, y


def test_store_tl_from_sample_chunks_equals_lstsq():
    """Blocks of 7 samples (fewer rows than columns: padded factors), 86 of them merged up a
    tree: each (step, layer) equals lstsq on the whole block."""
    rng = np.random.default_rng(3)
    widths = (12, 20)
    ds, acts, y = chunked_store(rng, 600, widths, chunk=7)
    got = target_linearity_dataset(ds)
    for s in range(acts.shape[0]):
        for j, w in enumerate(widths):
            want = tl_by_lstsq(acts[s, j, :, :w], y)
            assert abs(float(got["target_linearity"][s, j]) - want) < TOL
            assert int(got["rank"][s, j]) == w and int(got["dual"][s, j]) == 0


def test_factor_moment_traces_equal_the_pre_activations():
    """``tr(G S)`` and ``tr((S G)²)`` from one shared product equal ‖Z‖² and ‖ZᵀZ‖² of
    ``Z = H Wᵀ`` computed directly."""
    rng = np.random.default_rng(5)
    h, w = rng.normal(size=(80, 30)), rng.normal(size=(6, 30))
    z = h @ w.T
    norm, squared = FactorGram(w).moment_traces(h.T @ h)
    assert norm == pytest.approx(float((z * z).sum()), rel=TOL)
    assert squared == pytest.approx(float(((z.T @ z) ** 2).sum()), rel=TOL)


def test_gram_drift_and_cosine_equal_numpy():
    """From one pass over each layer's Grams: ``‖G_t − G_{t−1}‖/‖G_{t−1}‖`` and
    ``⟨G_t, G_T⟩/(‖G_t‖‖G_T‖)`` as numpy computes them from the dense Grams."""
    from flq_audit.metrics import gram_dataset

    rng = np.random.default_rng(11)
    widths, steps = (4, 6), 4
    grams = np.zeros((steps, len(widths), 6, 6))
    for s in range(steps):
        for j, w in enumerate(widths):
            weight = rng.normal(size=(w + 2, w))
            grams[s, j, :w, :w] = weight.T @ weight
    ds = xr.Dataset(
        {"gram": (("step", "layer", "gram_i", "gram_j"), grams),
         "done": (("step",), np.ones(steps, dtype=bool))},
        coords={"step": np.arange(steps) * 10, "layer": ["a", "b"],
                "width": ("layer", np.asarray(widths)), "gram_width": ("layer", np.asarray(widths))})
    got = gram_dataset(ds).compute()
    for j, w in enumerate(widths):
        g = grams[:, j, :w, :w]
        assert np.isnan(float(got["gram_drift"][0, j]))
        for s in range(steps):
            cosine = (g[s] * g[-1]).sum() / (np.linalg.norm(g[s]) * np.linalg.norm(g[-1]))
            assert float(got["gram_cosine_to_final"][s, j]) == pytest.approx(cosine, rel=TOL)
            if s:
                drift = np.linalg.norm(g[s] - g[s - 1]) / np.linalg.norm(g[s - 1])
                assert float(got["gram_drift"][s, j]) == pytest.approx(drift, rel=TOL)
