"""A captured layer's weight as a matrix in its input space, and its Gram WᵀW.

Conv kernels flatten to ``C_out × C_in·k·k``; transformers' Conv1D stores ``(d_in, d_out)``;
a parameter layer's matrix comes from the op that uses it (:mod:`flq_audit.capture.params`).
The Gram maths itself is NumPy (:mod:`flq_audit._gram_maths`), shared with the store.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from flq_audit import _gram_maths
from flq_audit.capture.params import ParameterLayer

#: What a captured layer is: a weight-bearing module or a parameter read by a tensor op.
Layer = nn.Module | ParameterLayer


def as_matrix(weight: torch.Tensor, *, conv1d: bool) -> torch.Tensor:
    """A weight as ``d_out × d_in``: transformers' Conv1D stores ``(d_in, d_out)``, conv
    kernels flatten to ``C_out × C_in·k·k``."""
    return weight.t() if conv1d else weight.reshape(weight.shape[0], -1)


def weight_matrix(module: Layer, weight: torch.Tensor | None = None) -> torch.Tensor:
    """The weight as a ``d_out × d_in`` matrix whose Gram lives in the layer's input space."""
    if isinstance(module, ParameterLayer):
        return module.matrix(weight)
    w = module.weight if weight is None else weight
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{type(module).__name__}.weight is a {type(w).__name__}, not a tensor")
    return as_matrix(w, conv1d=type(module).__name__ == "Conv1D")


def gram_of_matrix(matrix: torch.Tensor) -> np.ndarray:
    """WᵀW in float64 of a ``d_out × d_in`` matrix."""
    return _gram_maths.gram_of_matrix(matrix)


def gram(module: Layer, weight: torch.Tensor | None = None) -> np.ndarray:
    """WᵀW in float64."""
    return gram_of_matrix(weight_matrix(module, weight))


# transformers families whose Conv1D modules store weights as (d_in, d_out).
CONV1D_MODEL_TYPES = ("gpt2", "openai-gpt")
