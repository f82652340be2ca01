"""Gram-induced surrogate, pre-activation norm and scale-free alignment
(docs/concepts.md#surrogate-norm-and-alignment).

With ``Z = H Wᵀ`` (bias-free pre-activations), ``G = WᵀW`` and centred targets ``Y_c``, all
three come from moments and the Gram, without ``Z`` and without an n × n matrix:

.. math::
    S = \\operatorname{tr}(Y_c^\\top Z Z^\\top Y_c) = \\operatorname{tr}(M_c^\\top G M_c),\\quad
    \\lVert Z \\rVert_F^2 = \\operatorname{tr}(G\\, H^\\top H),\\quad
    A = \\frac{S}{\\lVert Z^\\top Z\\rVert_F \\, \\lVert Y_c^\\top Y_c \\rVert_F}
      = \\frac{S}{\\sqrt{\\operatorname{tr}((H^\\top H\\, G)^2)}\\, \\lVert Y_c^\\top Y_c\\rVert_F}

with ``M_c = Hᵀ Y_c``. ``A ∈ [0, 1]`` by Cauchy–Schwarz, ``A = 1`` iff ``ZZᵀ ∝ Y_cY_cᵀ``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flq_audit._gram_forms import DenseGram, GramForm
from flq_audit.metrics._kernels.moments import F64, Moments


@dataclass(frozen=True)
class SurrogateResult:
    """``surrogate`` on the paper's scale, ``surrogate_per_class`` = reference scale (÷ C)."""

    surrogate: float
    surrogate_per_class: float
    norm: float
    alignment: float


def _surrogate_compute(m: Moments, gram: F64 | GramForm) -> SurrogateResult:
    """Surrogate, norm and alignment of one layer from its moments and ``G = WᵀW``.

    Parameters
    ----------
    m : Moments
        Moments of the layer input ``H`` (width d) and targets ``Y`` (k columns).
    gram : ndarray of shape (d, d), or a GramForm of width d
        The weight Gram of the module that consumes ``H`` (a factor form answers from
        ``d_out × d_out`` products).
    """
    form = gram if isinstance(gram, GramForm) else DenseGram(gram)
    if (form.width, form.width) != m.hh.shape:
        nan = float("nan")
        return SurrogateResult(nan, nan, nan, nan)
    hy_c, _ = m.centered_targets()
    yy_c = m.yy - np.outer(m.y_sum, m.y_sum) / m.n
    surrogate = form.sandwich_trace(hy_c)
    norm, zz_squared = form.moment_traces(m.hh)
    zz_norm = float(np.sqrt(max(zz_squared, 0.0)))
    yy_norm = float(np.linalg.norm(yy_c))
    denominator = zz_norm * yy_norm
    alignment = surrogate / denominator if denominator > 0 else float("nan")
    k = hy_c.shape[1]
    return SurrogateResult(surrogate, surrogate / k, norm, alignment)


def surrogate(h: F64, w: F64, y: F64) -> SurrogateResult:
    """One-shot form: features ``h`` (n × d), weight ``w`` (d_out × d), targets ``y`` (n × k).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> h, w = rng.normal(size=(50, 4)), rng.normal(size=(3, 4))
    >>> y = np.eye(2)[rng.integers(0, 2, 50)]
    >>> r = surrogate(h, w, y)
    >>> yc = y - y.mean(0); z = h @ w.T
    >>> bool(np.isclose(r.surrogate, np.trace(yc.T @ z @ z.T @ yc)))
    True
    >>> 0.0 <= r.alignment <= 1.0
    True
    """
    from flq_audit.metrics._kernels.moments import _moments_update

    h = np.asarray(h, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(h.shape[0], -1)
    w = np.asarray(w, dtype=np.float64)
    m = Moments.from_matrix(_moments_update(h, y), h.shape[1], y.shape[1])
    return _surrogate_compute(m, w.T @ w)
