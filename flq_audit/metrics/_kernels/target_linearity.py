"""Target Linearity (docs/concepts.md#target-linearity): in-sample R² of a no-intercept
linear fit of the column-centred targets on the raw layer features.

Two equivalent forms, whichever is smaller: the primal one factors the d × d moment matrix
``HᵀH``, the dual one the n × n kernel ``HHᵀ`` (docs/concepts.md#primal-and-dual-forms).
Both share their nonzero eigenvalues, so the same rank-revealing rule keeps the same
directions and gives the same value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flq_audit.constants import DEFAULT_PCA_THRESHOLD, RANK_RTOL
from flq_audit.metrics._kernels.moments import (
    F64,
    DualMoments,
    Moments,
    QRFactor,
    _moments_update,
    kernel_update,
    qr_update,
    use_dual,
)


@dataclass(frozen=True)
class TLFit:
    """One Target Linearity fit and the rank decision it rests on.

    Ratios are singular values of ``H`` over the largest one: ``kept_ratio`` is the smallest
    kept, ``dropped_ratio`` the largest dropped (0 when nothing is dropped), and ``cutoff``
    the relative singular-value cut-off ``sqrt(rtol)`` that separates them.
    """

    tl: float
    rank: int
    n_features: int
    cutoff: float
    kept_ratio: float
    dropped_ratio: float
    dual: bool


def _fit_spectrum(w: F64, q2: F64, total: float, *, ridge: float, rtol: float,
                  ) -> tuple[float, int, float, float]:
    """``(explained, rank, kept_ratio, dropped_ratio)`` from the eigenvalues ``w`` of
    ``HᵀH`` or ``HHᵀ`` and the squared projections ``q2`` of the centred targets on the
    matching left singular vectors (``‖u_iᵀ Y_c‖²``)."""
    top = w.max(initial=0.0)
    if not top > 0:
        return 0.0, 0, float("nan"), float("nan")
    keep = w > rtol * top
    rank = int(keep.sum())
    wk, qk = w[keep], q2[keep]
    if ridge > 0:
        explained = float((qk * wk * (2.0 / (wk + ridge) - wk / (wk + ridge) ** 2)).sum())
    else:
        explained = float(qk.sum())
    kept = float(np.sqrt(wk.min() / top))
    dropped = float(np.sqrt(max(float(w[~keep].max(initial=0.0)), 0.0) / top))
    return explained, rank, kept, dropped


def _row_total(yy: F64, y_sum: F64, n: float, total: float) -> float:
    """The reference code's multi-column denominator ``‖Y_c − rowmean(Y_c)‖²``."""
    if yy.shape[0] <= 1:  # one column: the reference uses ‖y − ȳ‖²
        return total
    yy_c = yy - np.outer(y_sum, y_sum) / n
    return float(np.trace(yy_c) - yy_c.sum() / yy_c.shape[0])


def _fit_primal(m: Moments, *, ridge: float, pca: int | None, pca_threshold: int, rtol: float,
                denominator: str) -> TLFit:
    hy_c, total = m.centered_targets()
    hh = m.hh
    if total <= 0 or m.n < 2:
        return TLFit(float("nan"), 0, hh.shape[0], float(np.sqrt(rtol)), float("nan"),
                     float("nan"), False)
    if pca is not None and hh.shape[0] > pca_threshold:
        cov = hh - np.outer(m.h_sum, m.h_sum) / m.n
        _, vectors = np.linalg.eigh(cov)
        basis = vectors[:, ::-1][:, :pca]
        hh = basis.T @ hh @ basis
        hy_c = basis.T @ hy_c
    w, v = np.linalg.eigh(hh)
    with np.errstate(divide="ignore", invalid="ignore"):
        q2 = np.where(w > 0, ((v.T @ hy_c) ** 2).sum(axis=1) / np.where(w > 0, w, 1.0), 0.0)
    explained, rank, kept, dropped = _fit_spectrum(w, q2, total, ridge=ridge, rtol=rtol)
    total_out = _row_total(m.yy, m.y_sum, m.n, total) if denominator == "row" else total
    return TLFit(1.0 - (total - explained) / total_out, rank, hh.shape[0],
                 float(np.sqrt(rtol)), kept, dropped, False)


def _fit_dual(m: DualMoments, *, ridge: float, rtol: float, denominator: str) -> TLFit:
    y = np.asarray(m.y, dtype=np.float64)
    y_c = y - y.mean(axis=0)
    total = float((y_c**2).sum())
    if total <= 0 or m.n < 2:
        return TLFit(float("nan"), 0, m.width, float(np.sqrt(rtol)), float("nan"),
                     float("nan"), True)
    s, u = np.linalg.eigh(m.kernel)
    q2 = ((u.T @ y_c) ** 2).sum(axis=1)
    explained, rank, kept, dropped = _fit_spectrum(s, q2, total, ridge=ridge, rtol=rtol)
    total_out = (_row_total(y.T @ y, y.sum(axis=0), m.n, total) if denominator == "row"
                 else total)
    return TLFit(1.0 - (total - explained) / total_out, rank, m.width, float(np.sqrt(rtol)),
                 kept, dropped, True)


def _fit_qr(m: QRFactor, *, ridge: float, rtol: float, denominator: str) -> TLFit:
    """From ``R = [[R₁₁, R₁₂], [0, R₂₂]]`` of ``[H | Y_c]``: with ``R₁₁ = U S Vᵀ`` the left
    singular vectors of ``H`` are ``Q U``, so ``‖u_iᵀY_c‖² = ‖(UᵀR₁₂)_i‖²`` and ``w = S²``."""
    y = np.asarray(m.y, dtype=np.float64)
    total = float(((y - y.mean(axis=0)) ** 2).sum())
    if total <= 0 or m.n < 2:
        return TLFit(float("nan"), 0, m.width, float(np.sqrt(rtol)), float("nan"),
                     float("nan"), False)
    u, s, _ = np.linalg.svd(m.r[: m.width, : m.width])
    q2 = ((u.T @ m.r[: m.width, m.width :]) ** 2).sum(axis=1)
    explained, rank, kept, dropped = _fit_spectrum(s * s, q2, total, ridge=ridge, rtol=rtol)
    total_out = (_row_total(y.T @ y, y.sum(axis=0), m.n, total) if denominator == "row"
                 else total)
    return TLFit(1.0 - (total - explained) / total_out, rank, m.width, float(np.sqrt(rtol)),
                 kept, dropped, False)


def fit_target_linearity(
    m: Moments | DualMoments | QRFactor,
    *,
    ridge: float = 0.0,
    pca: int | None = None,
    pca_threshold: int = DEFAULT_PCA_THRESHOLD,
    rtol: float = RANK_RTOL,
    denominator: str = "column",
) -> TLFit:
    """TL from primal moments or the dual kernel, with its rank records.

    .. math::
        T_\\lambda(H, Y) = 1 - \\frac{\\lVert Y_c - H (H^\\top H + \\lambda I)^{+} H^\\top Y_c
        \\rVert_F^2}{\\lVert Y_c \\rVert_F^2}

    Notes
    -----
    Solved with ``eigh`` of the float64 ``HᵀH`` (primal moments) or ``HHᵀ`` (dual), or with
    the SVD of ``R₁₁`` from the QR factor of ``[H | Y_c]`` (:class:`QRFactor`: the form the
    store's metrics use for primal layers, as accurate as ``numpy.linalg.lstsq`` since it
    does not square the condition number of ``H``), and a pseudo-inverse cutoff
    ``rtol·λ_max`` on the eigenvalues ``w = s²`` (never an explicit inverse). With eigenpairs
    ``(w_i, u_i)`` of ``HHᵀ`` (``u_i = H v_i / √w_i`` for those of ``HᵀH``) the explained
    part is ``Σ_i ‖u_iᵀY_c‖²`` for ``λ = 0`` and ``Σ_i ‖u_iᵀY_c‖² w_i (2/(w_i+λ) −
    w_i/(w_i+λ)²)`` for ``λ > 0``. The optional PCA keeps the top ``pca`` eigenvectors of
    the centred covariance for layers wider than ``pca_threshold`` and fits on the uncentred
    projection (the reference convention), deterministically; it needs the primal form.

    ``denominator="row"`` reproduces the reference code's multi-column denominator
    ``‖Y_c − rowmean(Y_c)‖²`` (used for the VAE figures); it equals the paper's for centred
    one-hot targets and is smaller for continuous targets with per-row offsets.
    """
    if isinstance(m, DualMoments | QRFactor):
        if pca is not None and m.width > pca_threshold:
            raise ValueError("the PCA projection needs the primal (moment) form")
        if isinstance(m, QRFactor):
            return _fit_qr(m, ridge=ridge, rtol=rtol, denominator=denominator)
        return _fit_dual(m, ridge=ridge, rtol=rtol, denominator=denominator)
    return _fit_primal(m, ridge=ridge, pca=pca, pca_threshold=pca_threshold, rtol=rtol,
                       denominator=denominator)


def _target_linearity_compute(m: Moments | DualMoments | QRFactor, **options: object,
                              ) -> tuple[float, int, int]:
    """``(tl, rank, n_features_used)``; see :func:`fit_target_linearity`."""
    # the kernels pass TLOptions' fields by name; ``**options: object`` cannot say their types
    fit = fit_target_linearity(m, **options)  # type: ignore[arg-type]  # see the comment above
    return fit.tl, fit.rank, fit.n_features


def target_linearity(
    h: F64, y: F64, *, ridge: float = 0.0, pca: int | None = None,
    pca_threshold: int = DEFAULT_PCA_THRESHOLD, form: str = "auto",
) -> float:
    """Target Linearity of features ``h`` (n × d) for targets ``y`` (n × k or n,).

    Returns a value in [0, 1] (up to rounding) for ``λ ≥ 0``. ``form`` is ``"primal"``
    (d × d moments), ``"dual"`` (n × n kernel) or ``"auto"``: whichever is smaller (the
    primal one when a PCA projection applies).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> h = rng.normal(size=(200, 5))
    >>> h -= h.mean(axis=0)  # centred features: the centred targets lie in their span
    >>> y = h @ rng.normal(size=(5, 2))
    >>> round(target_linearity(h, y), 10)
    1.0
    """
    if form not in ("auto", "primal", "dual"):
        raise ValueError(f"form must be 'auto', 'primal' or 'dual', got {form!r}")
    h = np.asarray(h, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(h.shape[0], -1)
    projected = pca is not None and h.shape[1] > pca_threshold
    dual = form == "dual" or (form == "auto" and not projected
                              and use_dual(h.shape[0], h.shape[1], y.shape[1]))
    m: Moments | DualMoments | QRFactor
    if dual:
        m = DualMoments(kernel_update(h), y, h.shape[1])
    elif projected:
        m = Moments.from_matrix(_moments_update(h, y), h.shape[1], y.shape[1])
    else:
        m = QRFactor(qr_update(h, y - y.mean(axis=0)), h.shape[1], y)
    return fit_target_linearity(m, ridge=ridge, pca=pca, pca_threshold=pca_threshold).tl
