"""Streaming second moments: one augmented Gram carries every sufficient statistic.

For features ``H`` (n × d) and targets ``Y`` (n × k) the block ``A = [H | Y | 1]`` gives

.. math:: A^\\top A = \\begin{pmatrix} H^\\top H & H^\\top Y & H^\\top 1 \\\\
          Y^\\top H & Y^\\top Y & Y^\\top 1 \\\\ 1^\\top H & 1^\\top Y & n \\end{pmatrix}

and sums of such blocks over sample chunks equal the moments of the whole probe, in any
order: ``update`` per chunk, ``merge`` by addition, ``compute`` reads only the sums.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]


def _moments_update(h: npt.ArrayLike, y: npt.ArrayLike, *, size: int | None = None) -> F64:
    """Augmented moment matrix of one sample block.

    Parameters
    ----------
    h : ndarray of shape (n_samples, n_features)
    y : ndarray of shape (n_samples, n_targets)
    size : int, optional
        Pad the feature block to ``size`` columns (zeros), so blocks of layers with
        different widths share one shape.

    Returns
    -------
    ndarray of shape (size + n_targets + 1, size + n_targets + 1), float64
    """
    h = np.asarray(h, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    # an empty block (0 rows) cannot infer the column count with -1
    y = y.reshape(h.shape[0], -1) if y.size else y.reshape(0, int(np.prod(y.shape[1:])))
    d = h.shape[1] if size is None else size
    a = np.zeros((h.shape[0], d + y.shape[1] + 1))
    a[:, : h.shape[1]] = h
    a[:, d : d + y.shape[1]] = y
    a[:, -1] = 1.0
    return a.T @ a


@dataclass(frozen=True)
class Moments:
    """Named views of an augmented moment matrix for a layer of width ``d``."""

    hh: F64  # HᵀH (d × d)
    hy: F64  # HᵀY (d × k)
    h_sum: F64  # Hᵀ1 (d,)
    yy: F64  # YᵀY (k × k)
    y_sum: F64  # Yᵀ1 (k,)
    n: float

    @classmethod
    def from_matrix(cls, matrix: F64, width: int, n_targets: int) -> Moments:
        """Split the matrix; the feature block occupies the first ``size`` rows."""
        size = matrix.shape[0] - n_targets - 1
        t = slice(size, size + n_targets)
        return cls(
            hh=matrix[:width, :width], hy=matrix[:width, t], h_sum=matrix[:width, -1],
            yy=matrix[t, t], y_sum=matrix[t, -1], n=float(matrix[-1, -1]),
        )

    def centered_targets(self) -> tuple[F64, float]:
        """``(Hᵀ Y_c, ‖Y_c‖²_F)`` for column-centred targets ``Y_c = Y − 1 ȳᵀ``."""
        hy_c = self.hy - np.outer(self.h_sum, self.y_sum) / self.n
        total = float(np.trace(self.yy) - self.y_sum @ self.y_sum / self.n)
        return hy_c, total


@dataclass(frozen=True)
class DualMoments:
    """The dual (kernel) form of a layer wider than the probe: ``K = HHᵀ`` (n × n) and the
    targets ``Y`` (n × k). Every quantity Target Linearity needs is a function of ``K`` and
    ``Y``; ``K`` costs ``n²d`` to build and ``n³`` to factor instead of ``nd²`` and ``d³``."""

    kernel: F64  # HHᵀ (n × n)
    y: F64  # Y (n × k)
    width: int  # d, the layer's width

    @property
    def n(self) -> float:
        return float(self.kernel.shape[0])


def use_dual(n_samples: int, width: int, n_targets: int) -> bool:
    """Whether the dual (n × n) form is smaller than the primal moment matrix (d+k+1)²."""
    return n_samples < width + n_targets + 1


def kernel_update(h: npt.ArrayLike) -> F64:
    """``HHᵀ`` of one block of feature columns (all samples): sums over feature blocks."""
    h = np.asarray(h, dtype=np.float64)
    return h @ h.T


@dataclass(frozen=True)
class QRFactor:
    """The triangular factor ``R`` of ``[H | Y_c] = QR`` (``(d+k) × (d+k)``) and the
    centred targets' own statistics: least squares from ``R`` never squares the condition
    number of ``H``, as ``HᵀH`` does (``R₁₁`` has the singular values of ``H``, ``R₁₂ =
    QᵀY_c`` the targets' coordinates in its column space)."""

    r: F64
    width: int
    y: F64  # Y (n × k), uncentred

    @property
    def n(self) -> float:
        return float(self.y.shape[0])


def qr_update(h: npt.ArrayLike, y_c: npt.ArrayLike) -> F64:
    """``R`` of ``[H | Y_c]`` for one sample block, padded with zero rows to a square
    ``(d+k) × (d+k)`` when the block has fewer rows than columns."""
    h = np.asarray(h, dtype=np.float64)
    a = np.concatenate([h, np.asarray(y_c, dtype=np.float64).reshape(h.shape[0], -1)], axis=1)
    return _square(_r_of(a), a.shape[1])


def qr_merge(factors: npt.ArrayLike) -> F64:
    """``R`` of the stacked factors ``(m, p, p)``: the factor of every block's rows (TSQR)."""
    stacked = np.asarray(factors, dtype=np.float64)
    p = stacked.shape[-1]
    return _square(_r_of(stacked.reshape(-1, p)), p)


def _r_of(a: F64) -> F64:
    # ``mode="r"`` returns the array itself; numpy's stubs type every mode as a QRResult
    return cast(F64, np.linalg.qr(a, mode="r"))


def _square(r: F64, p: int) -> F64:
    if r.shape[0] == p:
        return r
    out = np.zeros((p, p))
    out[: r.shape[0]] = r
    return out
