"""NC3 (self-duality) and NC4 (nearest-class-centre agreement) of the classifier layer.

With centred class means ``M̃`` (d × C) of the classifier's input and its weight ``W`` (C × d):

.. math::
    \\mathrm{NC3} = \\left\\lVert \\frac{W}{\\lVert W\\rVert_F}
                    - \\frac{\\tilde M^\\top}{\\lVert \\tilde M\\rVert_F} \\right\\rVert_F

and NC4 is the fraction of samples whose nearest class mean (Euclidean) differs from the
model's prediction (Papyan, Han & Donoho 2020). Both are 0 at full neural collapse.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from flq_audit.metrics._kernels.moments import F64, Moments


def class_means(m: Moments) -> F64:
    """Class means as rows (C × d); classes without samples are NaN rows."""
    counts = m.y_sum
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (m.hy / np.where(counts > 0, counts, np.nan)).T
    return means


def _self_duality(m: Moments, weight: F64) -> float:
    """NC3 from the moments of the classifier's input and its weight (C × d)."""
    means = class_means(m)
    present = np.isfinite(means).all(axis=1)
    if present.sum() < 2 or not np.isfinite(weight[present]).all():
        return float("nan")
    centred = means[present] - m.h_sum / m.n
    w = weight[present]
    wn, mn = np.linalg.norm(w), np.linalg.norm(centred)
    if wn == 0 or mn == 0:
        return float("nan")
    return float(np.linalg.norm(w / wn - centred / mn))


def _ncc_disagreement(h: npt.ArrayLike, means: F64, predictions: npt.ArrayLike) -> F64:
    """Per sample: 1.0 where the nearest class mean differs from the prediction, else 0.0
    (NaN where there is no prediction)."""
    h = np.asarray(h, dtype=np.float64)
    predictions = np.asarray(predictions, dtype=np.float64)
    usable: npt.NDArray[np.bool_] = np.asarray(np.isfinite(means).all(axis=1))
    sq = (h**2).sum(1)[:, None] - 2 * h @ np.where(usable[:, None], means, 0).T + (
        np.where(usable[:, None], means, 0) ** 2).sum(1)[None, :]
    sq[:, ~usable] = np.inf
    nearest = sq.argmin(axis=1)
    out = (nearest != predictions).astype(np.float64)
    out[~np.isfinite(predictions) | (predictions < 0)] = np.nan
    return out
