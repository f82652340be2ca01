"""Flag weights that hold NaN or infinity: a warning and ``nonfinite(step, layer)``."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from flq_audit.audit.extensions.base import Extension, StepContext
from flq_audit.constants import LAYER, STEP
from flq_audit.errors import FlqAuditWarning
from flq_audit.store._records import VariableSpec

if TYPE_CHECKING:
    from flq_audit.store import StoreLayout


class NonFiniteWeights(Extension):
    """Whether each layer's weight holds NaN or Inf (a diverged run); its Gram is then NaN."""

    name: ClassVar[str] = "nonfinite"

    def variables(self, layout: StoreLayout) -> Sequence[VariableSpec]:
        return [VariableSpec("nonfinite", (STEP, LAYER), dtype="bool", fill=False, attrs={
            "long_name": "the layer's weight holds NaN or infinity at this step",
        })]

    def on_step(self, ctx: StepContext) -> Mapping[str, np.ndarray]:
        flags = np.zeros(len(ctx.plan.layers), dtype=bool)
        for i, info in enumerate(ctx.plan.layers):
            weight = ctx.weights.get(info.name)
            if weight is None or bool(torch.isfinite(weight).all()):
                continue
            flags[i] = True
            warnings.warn(
                f"step {ctx.ref.step} ({ctx.ref.label}): the weight of layer {info.name!r} "
                "holds NaN or infinity; its Gram and metrics are NaN",
                FlqAuditWarning, stacklevel=2,
            )
        return {"nonfinite": flags}
