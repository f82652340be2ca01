"""Forward-pass batches of a probe: what :func:`flq_audit.capture.replay` feeds the model."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from flq_audit.errors import CaptureError


class NotPerTokenError(CaptureError):
    """A layer's input has no token axis, so a token-level probe cannot use it."""


@dataclass(frozen=True)
class ProbeBatch:
    """One forward pass worth of probe: rows ``start:stop`` of the sample axis.

    ``inputs`` is a tensor (called as ``model(x)``) or a dict (``model(**x)``); ``reduce``
    maps a hooked tensor (batch, ..., width) to its ``stop − start`` sample rows (pooling or
    token selection for text); ``None`` flattens each batch item into one row.
    """

    start: int
    stop: int
    inputs: torch.Tensor | dict[str, torch.Tensor]
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None


class BatchSource(Protocol):
    """A probe that cuts itself into forward-pass batches (array and text probes)."""

    def batches(self, batch_size: int) -> Iterator[ProbeBatch]: ...


class OneBatch:
    """A batch source of a single, already cut batch."""

    def __init__(self, batch: ProbeBatch) -> None:
        self.batch = batch

    def batches(self, batch_size: int) -> Iterator[ProbeBatch]:
        yield self.batch


def array_batches(inputs: np.ndarray, batch_size: int) -> Iterator[ProbeBatch]:
    """Batches of an array probe (one row per input sample)."""
    for start in range(0, inputs.shape[0], batch_size):
        stop = min(start + batch_size, inputs.shape[0])
        x = torch.from_numpy(np.ascontiguousarray(inputs[start:stop]))
        if x.dtype != torch.float64:  # float64 stays: the replay casts to the model's dtype
            x = x.to(torch.float32)
        yield ProbeBatch(start, stop, x)


def batches_of(probe: BatchSource | np.ndarray, batch_size: int) -> Iterator[ProbeBatch]:
    """Batches of an input array or of a probe object."""
    if isinstance(probe, np.ndarray):
        return array_batches(probe, batch_size)
    return probe.batches(batch_size)


__all__ = ["BatchSource", "NotPerTokenError", "OneBatch", "ProbeBatch", "array_batches",
           "batches_of"]
