"""The swiss roll's virtual trajectory (the paper's Fig. 1): training and the stored gradients.

Data: the builtin ``swissroll`` probe (``make_swiss_roll(1000, random_state=0)``,
coordinates 0 and 2 min–max scaled to [0, 1], the target t min–max scaled too). Model: a GELU
MLP 2 → 32 → 32 → 1 whose first layer has no bias (:func:`make_dnn`, a model factory the
audit builds by name); full-batch SGD, lr 0.05, MSE, a checkpoint at every step.

The figure moves each input along its own loss gradient: frame k shows
X − 700·Σ_{s≤k} ∇_X L_s, the gradients taken at the fixed inputs X with the parameters of
step s (docs/concepts.md: the virtual update of the inputs). The store has no per-sample
input gradient, so :class:`InputGradients` (a step extension passed to
:func:`flq_audit.api.audit`) stores ``input_gradient(step, sample, feature)`` = ∇_X L_s
(float64, NaN beyond the 2 input columns). :mod:`flq_audit.recipes.swiss_roll_report`
draws the frames and builds the table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from flq_audit.audit.extensions import Extension
from flq_audit.constants import FEATURE, SAMPLE, STEP
from flq_audit.models import MLP
from flq_audit.recipes._common import save_checkpoint, save_probe
from flq_audit.store import VariableSpec

if TYPE_CHECKING:
    from flq_audit.audit.extensions.base import StepContext
    from flq_audit.store import StoreLayout

LR, SEED = 0.05, 0
#: The audit's ``model`` argument: this module's factory.
MODEL = "flq_audit.recipes.swiss_roll:make_dnn"
GRADIENT = "input_gradient"


def make_dnn() -> nn.Module:
    """GELU MLP 2 → 32 → 32 → 1 (modules ``layers.0`` … ``layers.2``), no bias in layer 0."""
    model = MLP(2, [32, 32], 1, activation="gelu", bias=True)
    model.layers[0] = nn.Linear(2, 32, bias=False)
    return model


def swiss_roll() -> tuple[np.ndarray, np.ndarray]:
    """The builtin probe's inputs ``(1000, 2)`` (float32) and target ``(1000, 1)``."""
    from flq_audit.probes import load_probe

    probe = load_probe("swissroll")
    return probe.inputs, probe.targets


def input_gradients(model: nn.Module, inputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """∇_X of the mean squared error over all samples, per sample ``(N, d)``, in float64."""
    x = torch.from_numpy(np.asarray(inputs, dtype=np.float64)).requires_grad_(True)
    y = torch.from_numpy(np.asarray(targets, dtype=np.float64))
    loss = F.mse_loss(model(x).reshape(y.shape), y, reduction="mean")
    (grad,) = torch.autograd.grad(loss, x)
    return grad.numpy()


class InputGradients(Extension):
    """``input_gradient(step, sample, feature)``: ∇_X L of the mean MSE over the probe at
    each step's parameters (the probe is the training set, trained full batch)."""

    name: ClassVar[str] = "input_gradients"

    def variables(self, layout: StoreLayout) -> Sequence[VariableSpec]:
        return [VariableSpec(GRADIENT, (STEP, SAMPLE, FEATURE), attrs={
            "long_name": "gradient of the mean MSE over the probe with respect to each input "
                         "(NaN beyond the input width)"})]

    def on_step(self, ctx: StepContext) -> Mapping[str, np.ndarray]:
        probe = ctx.plan.probe
        if ctx.built is None or probe is None:
            return {}
        work = ctx.plan.loader.training_copy(ctx.built, ctx.state)  # float64, this step's θ
        grad = input_gradients(work, probe.inputs, probe.targets)
        out = np.full((grad.shape[0], ctx.plan.layout.feature_max), np.nan)
        out[:, : grad.shape[1]] = grad
        return {GRADIENT: out}


def train(out_dir: str | Path, steps: int = 100, seed: int = SEED) -> Path:
    """Train full batch and save ``step_s.safetensors`` for s = 0 … ``steps`` and the probe."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    inputs, targets = swiss_roll()
    x, y = torch.from_numpy(inputs), torch.from_numpy(targets.astype(np.float32))
    torch.manual_seed(seed)
    model = make_dnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    for step in range(steps + 1):
        save_checkpoint(model, out / f"step_{step}.safetensors")
        if step == steps:
            break
        optimizer.zero_grad()
        F.mse_loss(model(x), y).backward()
        optimizer.step()
    save_probe(out / "probe.npz", inputs, targets, None)
    return out
