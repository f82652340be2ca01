"""Target Linearity (docs/concepts.md#target-linearity): in-sample R² of a no-intercept
linear fit of the column-centred targets on the raw layer features."""

from __future__ import annotations

import numpy as np

from flq_audit.constants import RANK_RTOL
from flq_audit.metrics._kernels.moments import F64, Moments, _moments_update


def _target_linearity_compute(
    m: Moments,
    *,
    ridge: float = 0.0,
    pca: int | None = None,
    pca_threshold: int = 1000,
    rtol: float = RANK_RTOL,
    denominator: str = "column",
) -> tuple[float, int, int]:
    """TL from moments. Returns ``(tl, rank, n_features_used)``.

    .. math::
        T_\\lambda(H, Y) = 1 - \\frac{\\lVert Y_c - H (H^\\top H + \\lambda I)^{+} H^\\top Y_c
        \\rVert_F^2}{\\lVert Y_c \\rVert_F^2}

    Notes
    -----
    Solved with ``eigh`` of the float64 ``HᵀH`` and a pseudo-inverse cutoff ``rtol·λ_max``
    (never an explicit inverse, never an n × n matrix). With ``λ = 0`` the residual is
    ``‖Y_c‖² − Σ_i p_i²/w_i`` for ``P = VᵀHᵀY_c``; with ``λ > 0`` it is
    ``‖Y_c‖² − Σ_i p_i² (2/(w_i+λ) − w_i/(w_i+λ)²)``. The optional PCA keeps the top ``pca``
    eigenvectors of the centred covariance for layers wider than ``pca_threshold`` and fits
    on the uncentred projection (the reference convention), deterministically.

    ``denominator="row"`` reproduces the reference code's multi-column denominator
    ``‖Y_c − rowmean(Y_c)‖²`` (used for the VAE figures); it equals the paper's for centred
    one-hot targets and is smaller for continuous targets with per-row offsets.
    """
    hy_c, total = m.centered_targets()
    hh = m.hh
    if total <= 0 or m.n < 2:
        return float("nan"), 0, hh.shape[0]
    if pca is not None and hh.shape[0] > pca_threshold:
        cov = hh - np.outer(m.h_sum, m.h_sum) / m.n
        _, vectors = np.linalg.eigh(cov)
        basis = vectors[:, ::-1][:, :pca]
        hh = basis.T @ hh @ basis
        hy_c = basis.T @ hy_c
    w, v = np.linalg.eigh(hh)
    top = w.max(initial=0.0)
    keep = w > rtol * top if top > 0 else np.zeros_like(w, dtype=bool)
    rank = int(keep.sum())
    p2 = ((v[:, keep].T @ hy_c) ** 2).sum(axis=1)
    wk = w[keep]
    if ridge > 0:
        explained = float((p2 * (2.0 / (wk + ridge) - wk / (wk + ridge) ** 2)).sum())
    else:
        explained = float((p2 / wk).sum())
    residual = total - explained
    if denominator == "row" and m.yy.shape[0] > 1:  # one column: the reference uses ‖y − ȳ‖²
        yy_c = m.yy - np.outer(m.y_sum, m.y_sum) / m.n
        total = float(np.trace(yy_c) - yy_c.sum() / yy_c.shape[0])
    return 1.0 - residual / total, rank, hh.shape[0]


def target_linearity(
    h: F64, y: F64, *, ridge: float = 0.0, pca: int | None = None, pca_threshold: int = 1000
) -> float:
    """Target Linearity of features ``h`` (n × d) for targets ``y`` (n × k or n,).

    Returns a value in [0, 1] (up to rounding) for ``λ ≥ 0``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> h = rng.normal(size=(200, 5))
    >>> h -= h.mean(axis=0)  # centred features: the centred targets lie in their span
    >>> y = h @ rng.normal(size=(5, 2))
    >>> round(target_linearity(h, y), 10)
    1.0
    """
    h = np.asarray(h, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(h.shape[0], -1)
    m = Moments.from_matrix(_moments_update(h, y), h.shape[1], y.shape[1])
    return _target_linearity_compute(m, ridge=ridge, pca=pca, pca_threshold=pca_threshold)[0]
