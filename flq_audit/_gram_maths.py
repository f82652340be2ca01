"""Weight Grams in NumPy: WᵀW in float64 of a ``d_out × d_in`` matrix.

Torch-free, so the store's writer (which computes each step's Grams on its own threads) and
any reader use it without importing torch. A torch tensor is taken as it comes from a model or
a state dict (any device, any float dtype including bfloat16, a parameter that requires grad):
it is converted by its own methods, which needs no ``import torch`` here.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt


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


def gram_of_matrix(matrix: MatrixLike) -> npt.NDArray[np.float64]:
    """WᵀW in float64 of a ``d_out × d_in`` matrix: ``d_in × d_in``, in the space of the
    layer's input features."""
    w = float64_matrix(matrix)
    return w.T @ w


__all__ = ["MatrixLike", "TensorLike", "float64_matrix", "gram_of_matrix"]
