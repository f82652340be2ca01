"""Neural collapse NC1 and NC2 (Papyan, Han & Donoho 2020) from streaming moments.

For one-hot targets ``Y`` (n × C) the augmented moments already hold every class statistic:
the class sums are the columns of ``HᵀY``, the class counts ``n_c`` are ``Yᵀ1`` (= diag(YᵀY)).
With the present classes only (``n_c > 0``; ``C`` counts them):

.. math::
    \\mu_c = \\frac{(H^\\top Y)_{:,c}}{n_c},\\quad \\mu_G = \\frac{H^\\top 1}{N},\\quad
    \\tilde M = [\\mu_1 - \\mu_G, \\dots, \\mu_C - \\mu_G] \\in \\mathbb{R}^{d \\times C},

    \\Sigma_W = \\frac{1}{N}\\Big(H^\\top H - \\sum_c n_c \\mu_c \\mu_c^\\top\\Big),\\quad
    \\Sigma_B = \\frac{1}{C} \\sum_c (\\mu_c - \\mu_G)(\\mu_c - \\mu_G)^\\top
              = \\frac{1}{C} \\tilde M \\tilde M^\\top,

    \\mathrm{NC1} = \\frac{1}{C} \\operatorname{tr}(\\Sigma_W \\Sigma_B^{+}).

``Σ_B`` is Papyan's *unweighted* between-class covariance (each class counts once, whatever
its size); ``μ_G`` is the sample mean (= the mean of the class means for balanced classes).

NC2 from the centred class means, with ``K = M̃ᵀM̃`` (C × C):

* equinorm: ``std_c ‖μ_c − μ_G‖ / mean_c ‖μ_c − μ_G‖`` (population std, ddof = 0);
* equiangularity: ``mean_{c≠c'} |cos(μ_c − μ_G, μ_c' − μ_G) + 1/(C−1)|``;
* simplex-ETF error: ``‖K/‖K‖_F − P/‖P‖_F‖_F`` with ``P = I − 11ᵀ/C`` (``‖P‖_F = √(C−1)``).

All three are 0 exactly when the centred class means form a simplex equiangular tight frame.

Notes
-----
Everything is computed in class space, float64, never with an n × n matrix or an explicit
inverse. With the eigendecomposition ``K = V diag(λ) Vᵀ`` (``eigh``, relative cutoff
``λ_i > rtol·λ_max`` as in the TL kernel), ``Σ_B⁺ = C · M̃ (K⁺)² M̃ᵀ``, so

.. math:: \\mathrm{NC1} = \\operatorname{tr}\\big((\\tilde M^\\top \\Sigma_W \\tilde M)(K^{+})^2\\big),

which costs O(d²C) for the C × C matrix ``M̃ᵀΣ_W M̃`` instead of an O(d³) decomposition of
``Σ_B``. Values are NaN where the moments are not finite, the targets are not one-hot, fewer
than two classes are present, or the class means coincide (``Σ_B = 0``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from flq_audit.metrics._kernels.moments import Moments, _moments_update
from flq_audit.metrics._kernels.target_linearity import RANK_RTOL

_NAN = float("nan")


@dataclass(frozen=True)
class CollapseResult:
    """NC1 and the NC2 measures of one layer, with the classes they rest on.

    ``n_classes`` counts the present classes (``n_c > 0``); ``excluded`` lists the target
    columns (class indices) left out because no probe sample belongs to them.
    """

    nc1: float
    nc2_equinorm: float
    nc2_equiangularity: float
    nc2_etf_error: float
    n_classes: int
    excluded: tuple[int, ...] = ()


def _is_one_hot(m: Moments, atol: float = 1e-6) -> bool:
    """Whether the moments can come from one-hot rows: ``YᵀY = diag(Yᵀ1)``, ``Σ n_c = n``."""
    yy, counts = m.yy, m.y_sum
    if not (np.isfinite(yy).all() and np.isfinite(counts).all()):
        return False
    off = yy - np.diag(np.diag(yy))
    return bool(
        (counts >= -atol).all()
        and np.allclose(np.diag(yy), counts, rtol=0, atol=atol)
        and np.abs(off).max(initial=0.0) <= atol
        and abs(counts.sum() - m.n) <= atol
    )


def _collapse_compute(m: Moments, *, rtol: float = RANK_RTOL) -> CollapseResult:
    """NC1 and NC2 of one layer from its moments with one-hot targets (see the module notes).

    Parameters
    ----------
    m : Moments
        Moments of the features ``H`` (width d) and one-hot targets ``Y`` (C columns).
    rtol : float
        Relative eigenvalue cutoff of the pseudo-inverse of ``Σ_B``.
    """
    if not _is_one_hot(m):
        return CollapseResult(_NAN, _NAN, _NAN, _NAN, 0)
    counts = np.rint(m.y_sum)
    present = counts > 0
    excluded = tuple(int(c) for c in np.flatnonzero(~present))
    c = int(present.sum())
    finite = np.isfinite(m.hh).all() and np.isfinite(m.hy).all() and np.isfinite(m.h_sum).all()
    if c < 2 or not finite or m.n < 1:
        return CollapseResult(_NAN, _NAN, _NAN, _NAN, c, excluded)
    n_c = counts[present]
    means = m.hy[:, present] / n_c  # μ_c as columns, d × C
    centred = means - (m.h_sum / m.n)[:, None]  # M̃
    gram = centred.T @ centred  # K = M̃ᵀM̃, C × C

    # NC1 = tr((M̃ᵀ Σ_W M̃)(K⁺)²), N·Σ_W = HᵀH − Σ_c n_c μ_c μ_cᵀ
    projected = centred.T @ means  # M̃ᵀ μ_c as columns
    within = (centred.T @ (m.hh @ centred) - (projected * n_c) @ projected.T) / m.n
    within = (within + within.T) / 2
    w, v = np.linalg.eigh((gram + gram.T) / 2)
    top = w.max(initial=0.0)
    if top > 0:
        keep = w > rtol * top
        vk = v[:, keep]
        nc1 = max(float(np.einsum("ij,ij->", vk, within @ vk / w[keep] ** 2)), 0.0)
    else:
        nc1 = _NAN

    # NC2
    norms = np.sqrt(np.clip(np.diag(gram), 0.0, None))
    mean_norm = norms.mean()
    equinorm = float(norms.std() / mean_norm) if mean_norm > 0 else _NAN
    if (norms > 0).all():
        cosine = gram / np.outer(norms, norms)
        off = ~np.eye(c, dtype=bool)
        equiangularity = float(np.abs(cosine[off] + 1.0 / (c - 1)).mean())
    else:
        equiangularity = _NAN
    gram_norm = np.linalg.norm(gram)
    if gram_norm > 0:
        etf = (np.eye(c) - 1.0 / c) / np.sqrt(c - 1)
        etf_error = float(np.linalg.norm(gram / gram_norm - etf))
    else:
        etf_error = _NAN
    return CollapseResult(nc1, equinorm, equiangularity, etf_error, c, excluded)


def neural_collapse(h: npt.ArrayLike, labels: npt.ArrayLike, num_classes: int) -> CollapseResult:
    """NC1 and NC2 of features ``h`` (n × d) with integer ``labels`` in ``[0, num_classes)``.

    Classes without samples are excluded (listed in ``excluded``).

    Examples
    --------
    >>> etf = np.eye(3) - 1 / 3  # class means: a centred simplex ETF (rows)
    >>> labels = np.repeat(np.arange(3), 4)
    >>> r = neural_collapse(etf[labels], labels, 3)  # every sample at its class mean
    >>> [round(abs(x), 10) for x in (r.nc1, r.nc2_equinorm, r.nc2_equiangularity,
    ...                              r.nc2_etf_error)]
    [0.0, 0.0, 0.0, 0.0]
    >>> noisy = etf[labels] + np.random.default_rng(0).normal(scale=0.1, size=(12, 3))
    >>> bool(neural_collapse(noisy, labels, 3).nc1 > 0)
    True
    >>> neural_collapse(etf[labels], labels, 4).excluded  # class 3 has no sample
    (3,)
    """
    h = np.asarray(h, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1)
    if h.ndim != 2 or labels.shape[0] != h.shape[0]:
        raise ValueError(f"need h of shape (n, d) and n labels, got {h.shape} and {labels.shape}")
    if labels.size and (not np.issubdtype(labels.dtype, np.integer)
                        or labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must be integers in [0, {num_classes})")
    y = np.eye(num_classes)[labels]
    m = Moments.from_matrix(_moments_update(h, y), h.shape[1], num_classes)
    return _collapse_compute(m)
