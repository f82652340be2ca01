"""Surrogate, alignment, Gram spectra and dynamics against closed forms and direct numpy
(docs/concepts.md, the surrogate and Gram sections)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import spearmanr

from flq_audit.metrics import gram_cosine, gram_drift, gram_spectrum, surrogate
from flq_audit.metrics._kernels.dynamics import depth_spearman, linearization_time


def _problem(seed: int, n: int = 60, d: int = 5, c: int = 3, d_out: int = 4):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.normal(size=(d_out, d)), np.eye(c)[rng.integers(0, c, n)]


def test_surrogate_forms_are_equal():
    h, w, y = _problem(0)
    yc = y - y.mean(0)
    z = h @ w.T
    result = surrogate(h, w, y)
    zz = z @ z.T  # the reference's N × N form, fine at this size
    assert result.surrogate == pytest.approx(np.trace(yc.T @ zz @ yc), rel=1e-12)
    assert result.surrogate_per_class == pytest.approx(np.mean(np.diag(yc.T @ zz @ yc)), rel=1e-12)
    assert result.surrogate == pytest.approx(np.linalg.norm(z.T @ yc) ** 2, rel=1e-12)
    assert result.norm == pytest.approx(np.linalg.norm(z) ** 2, rel=1e-12)
    expected = np.trace(yc.T @ zz @ yc) / (np.linalg.norm(z.T @ z) * np.linalg.norm(yc.T @ yc))
    assert result.alignment == pytest.approx(expected, rel=1e-12)


@settings(max_examples=25, deadline=None, database=None, derandomize=True)
@given(seed=st.integers(0, 10_000), d_out=st.integers(1, 6))
def test_alignment_lies_in_the_unit_interval(seed, d_out):
    h, w, y = _problem(seed, d_out=d_out)
    assert -1e-12 <= surrogate(h, w, y).alignment <= 1 + 1e-12


def test_alignment_is_one_when_pre_activations_are_the_targets_rotated():
    rng = np.random.default_rng(3)
    y = np.eye(4)[rng.integers(0, 4, 80)]
    yc = y - y.mean(0)
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))  # B Bᵀ = I
    h = np.hstack([yc @ q, np.zeros((80, 2))])  # features whose first block is Y_c B
    w = np.hstack([np.eye(4), np.zeros((4, 2))])  # Z = H Wᵀ = Y_c B
    assert surrogate(h, w, y).alignment == pytest.approx(1.0, abs=1e-12)


def test_proposition_2_simplex_etf():
    # centred features exactly at a balanced simplex ETF of class means and W = M⁺:
    # Z = Y_c, so G_id = Y_c Y_cᵀ, surrogate = tr((Y_cᵀY_c)²) and A = 1
    c, per = 4, 10
    labels = np.repeat(np.arange(c), per)
    y = np.eye(c)[labels]
    yc = y - y.mean(0)
    etf = np.eye(c) - 1.0 / c  # class means (rows): a centred simplex ETF in R^c
    h = etf[labels]
    w = np.linalg.pinv(etf)  # W = M⁺ maps each class mean to its centred one-hot row
    np.testing.assert_allclose(h @ w.T, yc, atol=1e-12)
    result = surrogate(h, w, y)
    assert result.surrogate == pytest.approx(np.trace((yc.T @ yc) @ (yc.T @ yc)), rel=1e-12)
    assert result.alignment == pytest.approx(1.0, abs=1e-12)


def test_gram_spectrum_against_numpy():
    rng = np.random.default_rng(4)
    w = rng.normal(size=(7, 5))
    g = w.T @ w
    top, effective, stable = gram_spectrum(g, top_k=3)
    values = np.sort(np.linalg.svd(w, compute_uv=False) ** 2)[::-1]
    np.testing.assert_allclose(top, values[:3], rtol=1e-10)
    p = values / values.sum()
    assert effective == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-10)
    assert stable == pytest.approx(np.linalg.norm(w) ** 2 / np.linalg.norm(w, 2) ** 2, rel=1e-10)
    padded, _, _ = gram_spectrum(g, top_k=8)
    assert np.isnan(padded[5:]).all()
    g2 = g + 0.1 * np.eye(5)
    assert gram_drift(g, g2) == pytest.approx(0.1 * np.sqrt(5) / np.linalg.norm(g), rel=1e-12)
    assert gram_cosine(g, 3 * g) == pytest.approx(1.0, abs=1e-14)


def test_dynamics_kernels():
    steps = np.array([0, 10, 20, 30, 40])
    curve = np.array([0.1, 0.3, np.nan, 0.95, 1.0])
    assert linearization_time(steps, curve, 0.5) == 30.0  # NaN steps are skipped
    assert linearization_time(steps, curve, 0.25) == 10.0
    assert np.isnan(linearization_time(steps, np.full(5, np.nan), 0.9))
    values = np.array([0.2, 0.1, 0.5, 0.4, 0.9])
    expected = spearmanr(np.arange(5), values).statistic
    assert depth_spearman(values) == pytest.approx(expected, abs=1e-12)
    assert np.isnan(depth_spearman(np.array([0.5, 0.5, 0.5])))
