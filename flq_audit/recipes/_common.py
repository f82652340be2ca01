"""Shared pieces of the recipes: checkpoint schedules and safetensors saving."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

#: Called by a recipe after each optimizer step with ``(step, total_steps, loss)``.
TrainingProgress = Callable[[int, int, float], None]


def log_schedule(total_steps: int, per_decade: tuple[int, ...] = (1, 2, 5)) -> list[int]:
    """Step 0 plus 1, 2, 5, 10, 20, 50, ... up to and including ``total_steps``.

    >>> log_schedule(300)
    [0, 1, 2, 5, 10, 20, 50, 100, 200, 300]
    """
    steps = {0, total_steps}
    scale = 1
    while scale <= total_steps:
        steps.update(m * scale for m in per_decade if m * scale <= total_steps)
        scale *= 10
    return sorted(steps)


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Row indices of mini-batches, endlessly: a fresh permutation whenever the current one
    has fewer than ``batch_size`` rows left (the remainder is dropped)."""
    order, cursor = torch.randperm(n, generator=generator), 0
    while True:
        if cursor + batch_size > n:
            order, cursor = torch.randperm(n, generator=generator), 0
        yield order[cursor : cursor + batch_size]
        cursor += batch_size


def save_checkpoint(model: torch.nn.Module, path: Path) -> None:
    """Save the state dict as safetensors (contiguous CPU tensors)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path))


def save_probe(path: Path, inputs: np.ndarray, targets: np.ndarray, num_classes: int | None) -> None:
    """Write a probe file that ``--probe`` reads."""
    arrays: dict[str, Any] = {"inputs": inputs.astype(np.float32), "targets": targets}
    if num_classes is not None:
        arrays["num_classes"] = np.asarray(num_classes, dtype=np.int64)
    np.savez(path, **arrays)


def save_spec(path: Path, spec: dict) -> None:
    path.write_text(json.dumps(spec, indent=2) + "\n")
