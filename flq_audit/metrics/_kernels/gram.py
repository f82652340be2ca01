"""Weight-Gram spectra and dynamics over checkpoints (pure float64 kernels)."""

from __future__ import annotations

import numpy as np

from flq_audit._gram_forms import psd_eigenvalues
from flq_audit.metrics._kernels.moments import F64


def gram_spectrum(gram: F64, *, top_k: int = 8) -> tuple[F64, float, float]:
    """Top-``k`` eigenvalues (descending, NaN-padded), effective rank and stable rank.

    Effective rank is ``exp(H(p))`` with ``p = λ / Σλ`` (spectral entropy); stable rank is
    ``tr(G) / λ_max`` = ``‖W‖_F² / ‖W‖_2²``.

    Examples
    --------
    >>> top, erank, srank = gram_spectrum(np.diag([4.0, 4.0, 0.0]), top_k=2)
    >>> top.tolist(), round(erank, 6), srank
    ([4.0, 4.0], 2.0, 2.0)
    """
    return spectrum_summary(psd_eigenvalues(gram), top_k=top_k)


def spectrum_summary(values: F64, *, top_k: int = 8) -> tuple[F64, float, float]:
    """:func:`gram_spectrum` from the eigenvalues themselves (descending, ≥ 0)."""
    values = np.asarray(values, dtype=np.float64)
    top = np.full(top_k, np.nan)
    top[: min(top_k, values.size)] = values[:top_k]
    total = values.sum()
    if total <= 0:
        return top, 0.0, 0.0
    p = values[values > 0] / total
    effective = float(np.exp(-(p * np.log(p)).sum()))
    return top, effective, float(total / values[0])


def gram_drift(previous: F64, current: F64) -> float:
    """Relative change ``‖G_t − G_{t−1}‖_F / ‖G_{t−1}‖_F``."""
    base = np.linalg.norm(previous)
    return float(np.linalg.norm(current - previous) / base) if base > 0 else float("nan")


def gram_cosine(a: F64, b: F64) -> float:
    """Cosine similarity ``⟨A, B⟩_F / (‖A‖_F ‖B‖_F)``."""
    denominator = np.linalg.norm(a) * np.linalg.norm(b)
    return float((a * b).sum() / denominator) if denominator > 0 else float("nan")
