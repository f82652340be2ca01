"""Lazy vs rich features on a staircase target (the paper's Fig. 8): training.

d = 10, n = 1000 Gaussian inputs drawn after ``torch.manual_seed(42)``, target
y = x₁x₂x₃x₄ + x₁x₂x₃ + x₁x₂ + x₁; a bias-free ReLU MLP 10 → W → W → 1 with weights
N(0, 1/fan_in) and its output divided by √W (``output_scale`` of the model spec); full-batch
SGD, lr 0.01, MSE, a checkpoint every 20 epochs (one epoch is one step).

The order of the random draws follows the paper's notebook as far as it can be inferred:
the seed, then the inputs, then one model per width in the order of ``widths`` from the same
generator, each built as ``nn.Linear`` layers (whose default initialisation draws first) and
then re-drawn from N(0, 1/fan_in) layer by layer. Training draws nothing, so the model of the
first width depends on nothing but the seed.

Each width gets a folder ``OUT/width_W/`` (``step_E.safetensors``, ``model_spec.json``,
``probe.npz`` = the training set with its continuous target, ``metrics.json`` = the training
MSE at every checkpoint); :mod:`flq_audit.recipes.staircase_report` audits them and builds
the table.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from flq_audit.models import build_from_spec
from flq_audit.recipes._common import save_checkpoint, save_probe, save_spec

SEED, DIM, N_SAMPLES, LR = 42, 10, 1000, 0.01


@dataclass(frozen=True)
class Size:
    """What one size of the recipe trains."""

    widths: tuple[int, ...]
    epochs: int
    every: int = 20


#: The paper's set-up, and a short one (the first width's run is the full run's first 100 epochs).
FULL = Size(widths=(32, 128, 512, 1024), epochs=2000)
SHORT = Size(widths=(32, 128), epochs=100)


def staircase_data(n: int = N_SAMPLES, d: int = DIM) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``(n, d)`` ~ N(0, I) from the global generator, and the staircase target ``(n,)``."""
    x = torch.randn(n, d)
    x1, x2, x3, x4 = x[:, 0], x[:, 1], x[:, 2], x[:, 3]
    return x, x1 * x2 * x3 * x4 + x1 * x2 * x3 + x1 * x2 + x1


def model_spec(width: int, d: int = DIM) -> dict:
    """Two bias-free ReLU hidden layers of ``width`` and a readout scaled by 1/√width."""
    return {"type": "mlp", "in_features": d, "widths": [width, width], "out_features": 1,
            "activation": "relu", "bias": False, "output_scale": 1.0 / math.sqrt(width)}


def init_model(width: int, d: int = DIM) -> nn.Module:
    """The MLP of ``width``, its weights re-drawn from N(0, 1/fan_in) (global generator)."""
    model = build_from_spec(model_spec(width, d))
    for layer in model.modules():
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, mean=0.0, std=1.0 / math.sqrt(layer.in_features))
    return model


def train_width(model: nn.Module, x: torch.Tensor, y: torch.Tensor, folder: Path, *,
                epochs: int, every: int, lr: float = LR) -> list[float]:
    """Full-batch SGD on the MSE; saves a checkpoint (and records its training MSE) every
    ``every`` epochs and at the last one. Returns the recorded MSEs."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = nn.MSELoss()
    history: list[float] = []
    for epoch in range(epochs + 1):
        loss = loss_fn(model(x).squeeze(1), y)
        if epoch % every == 0 or epoch == epochs:
            save_checkpoint(model, folder / f"step_{epoch}.safetensors")
            history.append(float(loss.detach()))
        if epoch == epochs:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return history


def run_name(width: int) -> str:
    return f"width_{width}"


def train(out_dir: str | Path, size: Size = SHORT) -> dict[int, Path]:
    """Train every width of ``size`` into ``out_dir/width_W``; returns the folders by width.

    Runs single-threaded (restored afterwards); full-batch SGD draws no random numbers, so
    the result does not depend on the thread count beyond float rounding.
    """
    out = Path(out_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(SEED)
        x, y = staircase_data()
        folders: dict[int, Path] = {}
        for width in size.widths:
            model = init_model(width)  # draws in the order of ``size.widths``
            folder = out / run_name(width)
            folder.mkdir(parents=True, exist_ok=True)
            history = train_width(model, x, y, folder, epochs=size.epochs, every=size.every)
            save_probe(folder / "probe.npz", x.numpy(), y.numpy()[:, None], None)
            save_spec(folder / "model_spec.json", model_spec(width))
            epochs = checkpoint_epochs(size)
            (folder / "metrics.json").write_text(json.dumps(
                {"epoch": epochs, "train_mse": history}, indent=1) + "\n")
            folders[width] = folder
        return folders
    finally:
        torch.set_num_threads(threads)


def checkpoint_epochs(size: Size) -> list[int]:
    """The epochs that get a checkpoint: every ``size.every`` and the last.

    >>> checkpoint_epochs(Size(widths=(8,), epochs=50))
    [0, 20, 40, 50]
    """
    return sorted({*range(0, size.epochs + 1, size.every), size.epochs})
