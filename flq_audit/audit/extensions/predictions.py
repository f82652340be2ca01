"""Class predictions per sample and the classifier's weight: the inputs of NC3 and NC4."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from flq_audit.audit.extensions.base import Extension, StepContext
from flq_audit.capture import PREDICTION, weight_matrix
from flq_audit.constants import GRAM_J, SAMPLE, STEP, TARGET
from flq_audit.store._records import VariableSpec

if TYPE_CHECKING:
    from flq_audit.store import StoreLayout


class ClassPredictions(Extension):
    """``prediction(step, sample)``: the argmax of the model's output, and, when a captured
    layer maps features to the class logits, ``classifier_weight(step, target, gram_j)``."""

    name: ClassVar[str] = "predictions"
    replay_outputs: ClassVar[frozenset[str]] = frozenset({"predictions"})

    def __init__(self, classifier: str | None = None) -> None:
        self.classifier = classifier

    def variables(self, layout: StoreLayout) -> Sequence[VariableSpec]:
        out = [VariableSpec("prediction", (STEP, SAMPLE), dtype="int64", fill=-1, attrs={
            "long_name": "argmax of the model's output for each probe sample (-1: not written)",
        })]
        if self.classifier is not None:
            out.append(VariableSpec("classifier_weight", (STEP, TARGET, GRAM_J), attrs={
                "long_name": "weight of the classifier layer (C × d), NaN-padded",
                "layer": self.classifier,
            }))
        return out

    def store_attrs(self) -> Mapping[str, str]:
        return {} if self.classifier is None else {"classifier": self.classifier}

    def on_batch(self, ctx: StepContext, start: int, stop: int,
                 captured: Mapping[str, np.ndarray]) -> None:
        n = ctx.plan.layout.probe.n_samples if ctx.plan.layout.probe is not None else stop
        predicted = ctx.scratch.setdefault(self.name, np.full(n, -1, dtype=np.int64))
        predicted[start:stop] = captured[PREDICTION]

    def on_step(self, ctx: StepContext) -> Mapping[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        if self.name in ctx.scratch:
            out["prediction"] = ctx.scratch[self.name]
        if self.classifier is not None and self.classifier in ctx.layers:
            weight = ctx.state.get(f"{self.classifier}.weight")
            matrix = weight_matrix(ctx.layers[self.classifier], weight)
            out["classifier_weight"] = matrix.detach().double().cpu().numpy()
        return out
