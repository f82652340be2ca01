"""Flag weights, or stored activations, that hold NaN or infinity: a warning and
``nonfinite(step, layer)``.

A weight is checked as loaded; the activations as stored, in the audit's activation dtype
(``--activation-dtype float16`` overflows beyond ±65504). Non-finite activations are flagged
only at steps whose weights are all finite: a NaN weight makes every layer after it NaN,
and its own flag already says why.
"""

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
    """Whether each layer's weight or stored activations hold NaN or Inf (a diverged run, or
    values beyond the activation dtype); its metrics are then NaN."""

    name: ClassVar[str] = "nonfinite"

    def variables(self, layout: StoreLayout) -> Sequence[VariableSpec]:
        return [VariableSpec("nonfinite", (STEP, LAYER), dtype="bool", fill=False, attrs={
            "long_name": "the layer's weight or its stored activations hold NaN or infinity "
                         "at this step",
        })]

    def on_batch(self, ctx: StepContext, start: int, stop: int,
                 captured: Mapping[str, np.ndarray]) -> None:
        seen = ctx.scratch.setdefault(_ACTIVATIONS, set())
        for info in ctx.plan.layers:
            rows = captured.get(info.name)
            if info.name not in seen and rows is not None and not np.isfinite(rows).all():
                seen.add(info.name)

    def on_step(self, ctx: StepContext) -> Mapping[str, np.ndarray]:
        flags = np.zeros(len(ctx.plan.layers), dtype=bool)
        where = f"step {ctx.ref.step} ({ctx.ref.label})"
        for i, info in enumerate(ctx.plan.layers):
            weight = ctx.weights.get(info.name)
            if weight is None or bool(torch.isfinite(weight).all()):
                continue
            flags[i] = True
            warnings.warn(f"{where}: the weight of layer {info.name!r} holds NaN or infinity; "
                          "its Gram and metrics are NaN", FlqAuditWarning, stacklevel=2)
        if flags.any():
            return {"nonfinite": flags}
        dtype = ctx.plan.capture.activation_dtype
        for i, info in enumerate(ctx.plan.layers):
            if info.name in ctx.scratch.get(_ACTIVATIONS, ()):
                flags[i] = True
                warnings.warn(
                    f"{where}: the activations of layer {info.name!r} hold NaN or infinity as "
                    f"stored ({dtype}{_RANGE.get(dtype, '')}); its metrics are NaN"
                    + ("; audit with --activation-dtype float32" if dtype == "float16" else ""),
                    FlqAuditWarning, stacklevel=2)
        return {"nonfinite": flags}


#: The ``scratch`` key of the layers whose stored activations were not finite in some batch.
_ACTIVATIONS = "nonfinite_activations"
_RANGE = {"float16": ": values beyond ±65504 overflow"}
