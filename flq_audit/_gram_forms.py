"""The forms a stored Gram takes, and the Gram quantities each computes exactly.

A store keeps, per layer, the cheaper exact form of ``G = WᵀW`` (``d_in × d_in``) of a
weight ``W`` (``d_out × d_in``): the dense Gram when ``d_in ≤ d_out``, the factor ``W``
itself when ``d_out < d_in``, or only the eigenvalues (``--grams spectrum``). Every metric
asks its form for what it needs (:class:`GramForm`); the factor form answers from
``d_out × d_out`` products and never forms a ``d_in × d_in`` matrix. Torch-free: the store,
the metrics and the accessor share it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]

DENSE, FACTOR, SPECTRUM, NONE = "dense", "factor", "spectrum", "none"
#: What ``--grams`` keeps of a layer whose weight has ``d_out`` rows and ``d_in`` columns.
FORMS = (DENSE, FACTOR, SPECTRUM, NONE)


GRAM = "gram"
GRAM_FACTOR = "gram_factor"
GRAM_EIGENVALUES = "gram_eigenvalues"
FACTOR_ROW = "factor_row"
GRAM_FORM = "gram_form"
GRAM_ROWS = "gram_rows"
#: The store variable each form is stored in.
VARIABLE_OF = {DENSE: GRAM, FACTOR: GRAM_FACTOR, SPECTRUM: GRAM_EIGENVALUES}
#: Every variable that holds a Gram in some form.
GRAM_VARIABLES = tuple(VARIABLE_OF.values())


def stored_forms(ds: Any) -> list[str]:
    """Each layer's form as a store's Dataset records it (``dense`` for stores without
    ``gram_form``; ``none`` for every layer of a store without any Gram variable)."""
    if GRAM_FORM in ds.coords or GRAM_FORM in ds:
        return [str(form) for form in np.asarray(ds[GRAM_FORM].values)]
    return [DENSE if GRAM in ds else NONE] * int(ds.sizes["layer"])


def form_for(grams: str, d_out: int, d_in: int) -> str:
    """The form of one layer under ``--grams grams`` (``d_out`` 0: no weight, no Gram)."""
    if grams == "none" or d_out <= 0:
        return NONE
    if grams == "spectrum":
        return SPECTRUM
    if grams == "compact" and d_out < d_in:
        return FACTOR
    return DENSE


def psd_eigenvalues(matrix: npt.ArrayLike) -> F64:
    """Eigenvalues of a symmetric positive semi-definite matrix, descending, clipped at 0
    (symmetrised first: rounding leaves a computed Gram slightly asymmetric)."""
    m = np.asarray(matrix, dtype=np.float64)
    return np.clip(np.linalg.eigvalsh((m + m.T) / 2.0)[::-1], 0.0, None)


class WholeGramNeeded(ValueError):
    """A quantity that the eigenvalues alone do not determine."""


class GramForm(ABC):
    """One layer's Gram at one step, in its stored form (float64)."""

    width: int

    @abstractmethod
    def dense(self) -> F64:
        """``WᵀW`` itself (``width × width``)."""

    @abstractmethod
    def eigenvalues(self) -> F64:
        """The ``width`` eigenvalues, descending, clipped at 0."""

    @abstractmethod
    def frobenius(self) -> float:
        """``‖G‖_F``."""

    @abstractmethod
    def trace(self) -> float:
        """``tr G = ‖W‖_F²``."""

    def sandwich_trace(self, m: F64) -> float:
        """``tr(Mᵀ G M)`` of a ``width × k`` matrix ``M``."""
        raise WholeGramNeeded("tr(MᵀGM) needs the whole Gram")

    def trace_with(self, s: F64) -> float:
        """``tr(G S)`` of a symmetric ``width × width`` matrix ``S``."""
        raise WholeGramNeeded("tr(GS) needs the whole Gram")

    def trace_with_squared(self, s: F64) -> float:
        """``tr((S G)²)`` of a symmetric ``width × width`` matrix ``S``."""
        raise WholeGramNeeded("tr((SG)²) needs the whole Gram")

    def moment_traces(self, s: F64) -> tuple[float, float]:
        """``(tr(G S), tr((S G)²))`` of a symmetric ``width × width`` matrix ``S``: the two
        traces the surrogate's norm and alignment need, sharing their products."""
        return self.trace_with(s), self.trace_with_squared(s)

    def inner(self, other: GramForm) -> float:
        """``⟨G, G'⟩_F``."""
        raise WholeGramNeeded("⟨G, G'⟩ needs the whole Gram")

    def distance(self, other: GramForm) -> float:
        """``‖G − G'‖_F``."""
        raise WholeGramNeeded("‖G − G'‖ needs the whole Gram")

    def _same_form(self, other: GramForm) -> None:
        if type(other) is not type(self) or other.width != self.width:
            raise TypeError(f"cannot compare a {type(self).__name__} of width {self.width} "
                            f"with a {type(other).__name__} of width {other.width}")


class DenseGram(GramForm):
    """``G`` stored whole."""

    def __init__(self, gram: npt.ArrayLike) -> None:
        self.gram = np.asarray(gram, dtype=np.float64)
        self.width = int(self.gram.shape[0])

    def dense(self) -> F64:
        return self.gram

    def eigenvalues(self) -> F64:
        return psd_eigenvalues(self.gram)

    def frobenius(self) -> float:
        return float(np.linalg.norm(self.gram))

    def trace(self) -> float:
        return float(np.trace(self.gram))

    def sandwich_trace(self, m: F64) -> float:
        return float(np.einsum("ik,ij,jk->", m, self.gram, m))

    def trace_with(self, s: F64) -> float:
        return float(np.einsum("ij,ji->", self.gram, s))

    def trace_with_squared(self, s: F64) -> float:
        sg = s @ self.gram
        return float(np.einsum("ij,ji->", sg, sg))

    def inner(self, other: GramForm) -> float:
        self._same_form(other)
        assert isinstance(other, DenseGram)
        return float((self.gram * other.gram).sum())

    def distance(self, other: GramForm) -> float:
        self._same_form(other)
        assert isinstance(other, DenseGram)
        return float(np.linalg.norm(self.gram - other.gram))


class FactorGram(GramForm):
    """``G = WᵀW`` kept as ``W`` (``rows × width``, ``rows < width``): every quantity from
    ``rows × rows`` products."""

    def __init__(self, weight: npt.ArrayLike) -> None:
        self.weight = np.asarray(weight, dtype=np.float64)
        self.rows, self.width = (int(n) for n in self.weight.shape)

    def dense(self) -> F64:
        return self.weight.T @ self.weight

    def _outer(self) -> F64:
        return self.weight @ self.weight.T

    def eigenvalues(self) -> F64:
        values = psd_eigenvalues(self._outer())
        out = np.zeros(self.width)
        out[: values.size] = values
        return out

    def frobenius(self) -> float:
        return float(np.linalg.norm(self._outer()))  # ‖WᵀW‖_F = ‖WWᵀ‖_F

    def trace(self) -> float:
        return float((self.weight * self.weight).sum())

    def sandwich_trace(self, m: F64) -> float:
        wm = self.weight @ m
        return float((wm * wm).sum())  # ‖WM‖_F²

    def trace_with(self, s: F64) -> float:
        return float(((self.weight @ s) * self.weight).sum())  # tr(W S Wᵀ)

    def trace_with_squared(self, s: F64) -> float:
        return self.moment_traces(s)[1]

    def moment_traces(self, s: F64) -> tuple[float, float]:
        """One ``W S`` product serves both: ``tr(W S Wᵀ)`` and ``‖W S Wᵀ‖_F²`` (``W S Wᵀ``
        symmetric, so ``tr((SWᵀW)²)`` is its squared norm)."""
        ws = self.weight @ s
        a = ws @ self.weight.T
        return float((ws * self.weight).sum()), float((a * a).sum())

    def inner(self, other: GramForm) -> float:
        self._same_form(other)
        assert isinstance(other, FactorGram)
        cross = self.weight @ other.weight.T  # ⟨WᵀW, VᵀV⟩ = ‖W Vᵀ‖_F²
        return float((cross * cross).sum())

    def distance(self, other: GramForm) -> float:
        """With ``S = W + V`` and ``D = W − V``: ``WᵀW − VᵀV = (SᵀD + DᵀS)/2``, so
        ``‖·‖² = (⟨SSᵀ, DDᵀ⟩ + tr((DSᵀ)²)) / 2``: no cancellation between two Grams of the
        size of ``G`` (a small change is as exact as ``D``)."""
        self._same_form(other)
        assert isinstance(other, FactorGram)
        if other.rows != self.rows:
            raise TypeError(f"factors of {self.rows} and {other.rows} rows")
        s, d = self.weight + other.weight, self.weight - other.weight
        ds = d @ s.T
        squared = 0.5 * (float(((s @ s.T) * (d @ d.T)).sum()) + float((ds * ds.T).sum()))
        return float(np.sqrt(max(squared, 0.0)))


class SpectrumGram(GramForm):
    """Only the eigenvalues of ``G`` (``--grams spectrum``)."""

    def __init__(self, eigenvalues: npt.ArrayLike) -> None:
        values = np.asarray(eigenvalues, dtype=np.float64)
        self.values = np.clip(np.sort(values)[::-1], 0.0, None)
        self.width = int(values.size)

    def dense(self) -> F64:
        raise WholeGramNeeded("WᵀW itself needs the whole Gram")

    def eigenvalues(self) -> F64:
        return self.values

    def frobenius(self) -> float:
        return float(np.sqrt((self.values**2).sum()))

    def trace(self) -> float:
        return float(self.values.sum())


def weight_form(weight: npt.ArrayLike) -> GramForm:
    """The cheaper exact form of ``WᵀW`` for a weight ``W``: its factor when it has fewer
    rows than columns, the dense Gram otherwise."""
    w = np.asarray(weight, dtype=np.float64)
    return FactorGram(w) if w.shape[0] < w.shape[1] else DenseGram(w.T @ w)


def form_of(form: str, values: npt.ArrayLike) -> GramForm:
    """The :class:`GramForm` of stored ``values`` (already sliced to the layer's size)."""
    if form == DENSE:
        return DenseGram(values)
    if form == FACTOR:
        return FactorGram(values)
    if form == SPECTRUM:
        return SpectrumGram(values)
    raise WholeGramNeeded(f"a layer stored with gram_form {form!r} has no Gram")


__all__ = ["DENSE", "FACTOR", "FACTOR_ROW", "FORMS", "GRAM", "GRAM_EIGENVALUES", "GRAM_FACTOR",
           "GRAM_FORM", "GRAM_ROWS", "GRAM_VARIABLES", "NONE", "SPECTRUM", "VARIABLE_OF",
           "DenseGram", "FactorGram", "GramForm", "SpectrumGram", "WholeGramNeeded", "form_for",
           "form_of", "psd_eigenvalues", "stored_forms", "weight_form"]
