"""Linearization timing and depth ordering from a TL table (docs/concepts.md#dynamics)."""

from __future__ import annotations

import numpy as np

from flq_audit.metrics._kernels.moments import F64


def linearization_time(steps: F64, curve: F64, fraction: float) -> float:
    """First step where ``curve ≥ fraction · max(curve)``; NaN when fewer than two steps are
    finite (one value is no curve: nothing crosses).

    >>> linearization_time(np.array([0, 10, 20, 30]), np.array([0.1, 0.5, 0.95, 1.0]), 0.9)
    20.0
    """
    curve = np.asarray(curve, dtype=np.float64)
    finite = np.isfinite(curve)
    if finite.sum() < 2:
        return float("nan")
    threshold = fraction * np.nanmax(curve)
    hits = np.flatnonzero(finite & (curve >= threshold))
    return float(np.asarray(steps)[hits[0]])


def depth_spearman(values: F64) -> float:
    """Spearman ρ between depth (position) and the values of one step (ties averaged).

    >>> round(depth_spearman(np.array([0.1, 0.2, 0.4, 0.3])), 12)
    0.8
    """
    from scipy.stats import spearmanr

    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    if finite.sum() < 3 or np.ptp(values[finite]) == 0:
        return float("nan")
    rho = spearmanr(np.flatnonzero(finite), values[finite]).statistic
    return float(rho)
