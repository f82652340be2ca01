"""Streaming moments: the augmented Gram [H|Y|1]ᵀ[H|Y|1], its views, and chunk sums.

Expected values come from explicit numpy products, never from the code under test.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flq_audit.metrics._kernels.moments import Moments, _moments_update


def _data(seed: int, n: int = 23, d: int = 4, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) + 0.7, rng.normal(size=(n, k)) - 0.3


def test_update_is_the_augmented_gram():
    h, y = _data(0)
    a = np.hstack([h, y, np.ones((h.shape[0], 1))])
    m = _moments_update(h, y)
    assert m.dtype == np.float64
    np.testing.assert_allclose(m, a.T @ a, rtol=1e-14, atol=1e-12)


def test_update_padding_puts_zeros_between_features_and_targets():
    h, y = _data(1)
    n, d = h.shape
    k = y.shape[1]
    size = d + 3
    m = _moments_update(h, y, size=size)
    assert m.shape == (size + k + 1, size + k + 1)
    a = np.hstack([h, np.zeros((n, size - d)), y, np.ones((n, 1))])
    np.testing.assert_allclose(m, a.T @ a, rtol=1e-14, atol=1e-12)
    assert not m[d:size].any() and not m[:, d:size].any()


def test_update_accepts_1d_targets_and_float32():
    h, y = _data(2, k=1)
    m64 = _moments_update(h, y)
    m1d = _moments_update(h.astype(np.float32), y[:, 0].astype(np.float32))
    assert m1d.dtype == np.float64
    assert m1d.shape == m64.shape
    a = np.hstack([h.astype(np.float32), y.astype(np.float32), np.ones((h.shape[0], 1))])
    a = a.astype(np.float64)
    np.testing.assert_allclose(m1d, a.T @ a, rtol=1e-13, atol=1e-12)


def test_empty_block_is_zero():
    m = _moments_update(np.zeros((0, 4)), np.zeros((0, 2)), size=6)
    assert m.shape == (9, 9)
    assert not m.any()


@pytest.mark.parametrize("pad", [0, 5])
def test_from_matrix_views(pad):
    h, y = _data(3)
    n, d = h.shape
    k = y.shape[1]
    mom = Moments.from_matrix(_moments_update(h, y, size=d + pad), d, k)
    np.testing.assert_allclose(mom.hh, h.T @ h, rtol=1e-13)
    np.testing.assert_allclose(mom.hy, h.T @ y, rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(mom.h_sum, h.sum(axis=0), rtol=1e-13)
    np.testing.assert_allclose(mom.yy, y.T @ y, rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(mom.y_sum, y.sum(axis=0), rtol=1e-13)
    assert mom.n == n


def test_centered_targets():
    h, y = _data(4)
    d, k = h.shape[1], y.shape[1]
    yc = y - y.mean(axis=0)
    hy_c, total = Moments.from_matrix(_moments_update(h, y), d, k).centered_targets()
    np.testing.assert_allclose(hy_c, h.T @ yc, rtol=1e-12, atol=1e-12)
    assert total == pytest.approx(float((yc**2).sum()), rel=1e-13)


@settings(max_examples=30, deadline=None, database=None, derandomize=True)
@given(data=st.data())
def test_chunk_sums_equal_one_shot(data):
    n = data.draw(st.integers(1, 50), label="n")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    h, y = _data(seed, n=n, d=3, k=2)
    cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=6), label="cuts"))
    bounds = [0, *cuts, n]
    blocks = list(pairwise(bounds))
    order = data.draw(st.permutations(range(len(blocks))), label="order")
    total = sum(_moments_update(h[a:b], y[a:b], size=5) for a, b in (blocks[i] for i in order))
    np.testing.assert_allclose(total, _moments_update(h, y, size=5), rtol=1e-12, atol=1e-10)
