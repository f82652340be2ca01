"""Weight Grams in NumPy: WᵀW in float64 of a ``d_out × d_in`` matrix, its compact forms.

Torch-free, so the store's writer (which computes each step's Grams on its own threads) and
any reader use it without importing torch. A torch tensor is taken as it comes from a model or
a state dict (any device, any float dtype including bfloat16, a parameter that requires grad):
it is converted by its own methods, which needs no ``import torch`` here.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from flq_audit._gram_forms import psd_eigenvalues


@runtime_checkable
class TensorLike(Protocol):
    """What this module needs of a torch tensor: ``detach()``, then ``cpu()``, ``double()``
    and ``numpy()`` on the result."""

    def detach(self) -> Any: ...


#: A weight matrix: a NumPy array (or anything ``np.asarray`` reads) or a torch tensor.
MatrixLike = npt.ArrayLike | TensorLike


def float64_matrix(matrix: MatrixLike) -> npt.NDArray[np.float64]:
    """``matrix`` as a 2-D float64 NumPy array on the CPU (no copy when it already is one)."""
    if isinstance(matrix, TensorLike) and not isinstance(matrix, np.ndarray):
        values = matrix.detach().cpu().double().numpy()
    else:
        values = np.asarray(matrix, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"a weight matrix is 2-D (d_out × d_in), got shape {values.shape}")
    return values


#: Rows of a weight turned into float64 at once while its Gram is summed: the float64 copy
#: of a wide matrix (an unembedding of 50k × 4k is 1.6 GB) is never made whole.
ROW_BLOCK = 2048


def _rows(matrix: MatrixLike, begin: int, end: int) -> npt.NDArray[np.float64]:
    return float64_matrix(matrix[begin:end])  # type: ignore[index]  # tensors and arrays slice


def _shape(matrix: MatrixLike) -> tuple[int, int]:
    shape = tuple(getattr(matrix, "shape", np.shape(matrix)))  # type: ignore[arg-type]
    if len(shape) != 2:
        raise ValueError(f"a weight matrix is 2-D (d_out × d_in), got shape {shape}")
    return int(shape[0]), int(shape[1])


def gram_of_matrix(matrix: MatrixLike) -> npt.NDArray[np.float64]:
    """WᵀW in float64 of a ``d_out × d_in`` matrix: ``d_in × d_in``, in the space of the
    layer's input features; summed over blocks of ``ROW_BLOCK`` rows."""
    rows, cols = _shape(matrix)
    if rows <= ROW_BLOCK:
        w = float64_matrix(matrix)
        return w.T @ w
    out = np.zeros((cols, cols))
    for begin in range(0, rows, ROW_BLOCK):
        block = _rows(matrix, begin, begin + ROW_BLOCK)
        out += block.T @ block
    return out


def matrix_as(matrix: MatrixLike, dtype: str) -> npt.NDArray[np.floating]:
    """The weight itself as a NumPy array of ``dtype`` (``float32`` or ``float64``): the
    factor form of its Gram. A float32 (or half) weight converts without a float64 copy."""
    if isinstance(matrix, TensorLike) and not isinstance(matrix, np.ndarray):
        tensor = matrix.detach().cpu()
        values = (tensor.double() if dtype == "float64" else tensor.float()).numpy()
    else:
        values = np.asarray(matrix, dtype=dtype)
    if values.ndim != 2:
        raise ValueError(f"a weight matrix is 2-D (d_out × d_in), got shape {values.shape}")
    return values


def gram_eigenvalues(matrix: MatrixLike) -> npt.NDArray[np.float64]:
    """The ``d_in`` eigenvalues of WᵀW, descending and clipped at 0, from the smaller of
    WWᵀ and WᵀW (the nonzero eigenvalues of both are the squared singular values of W)."""
    rows, cols = _shape(matrix)
    if rows < cols:
        w = float64_matrix(matrix)
        small = w @ w.T
    else:
        small = gram_of_matrix(matrix)
    values = psd_eigenvalues(small)
    out = np.zeros(cols)
    out[: values.size] = values
    return out


__all__ = ["ROW_BLOCK", "MatrixLike", "TensorLike", "float64_matrix", "gram_eigenvalues",
           "gram_of_matrix", "matrix_as"]
