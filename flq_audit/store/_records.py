"""Plain records the store schema is built from (no torch: the read path imports these)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LayerInfo:
    """A captured layer: its module or parameter name, kind, activation width and Gram width.

    ``kind`` is the module class (``Linear``, ``Conv2d``, ``Conv1D``), ``HiddenState`` for the
    residual stream, ``weight2d``… in weights-only audits, or ``Parameter(in=1)`` for a bare
    parameter read by a tensor op: ``in`` lists the parameter dimensions the op contracts
    with its input (``x @ W.T`` and ``F.linear(x, W)``: ``in=1``; ``x @ W``: ``in=0``).
    """

    name: str
    kind: str
    width: int
    gram_width: int
    #: Rows of the weight as a matrix (``d_out``; conv kernels: ``C_out``); 0: no weight
    #: (the residual stream); ``None``: not known (its Gram is kept whole).
    gram_rows: int | None = None

    def identity(self) -> dict[str, object]:
        """What the store fingerprint compares (``gram_rows`` follows from the weights)."""
        return {"name": self.name, "kind": self.kind, "width": self.width,
                "gram_width": self.gram_width}


PARAMETER_KIND = "Parameter"


def parameter_kind(input_dims: tuple[int, ...]) -> str:
    """The ``kind`` of a parameter layer whose input space is ``input_dims`` of the parameter."""
    return f"{PARAMETER_KIND}(in={','.join(str(d) for d in input_dims)})"


def parameter_input_dims(kind: str) -> tuple[int, ...] | None:
    """The input dimensions a parameter layer's ``kind`` names (``None``: not a parameter)."""
    prefix = f"{PARAMETER_KIND}(in="
    if not (kind.startswith(prefix) and kind.endswith(")")):
        return None
    return tuple(int(d) for d in kind[len(prefix):-1].split(","))


@dataclass(frozen=True, eq=False)
class ProbeSummary:
    """What the store keeps of a probe: identity, targets and labels (not the inputs)."""

    name: str
    fingerprint: str
    n_samples: int
    kind: str
    targets: np.ndarray
    labels: np.ndarray | None = None
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None

    @classmethod
    def of(cls, probe: Any) -> ProbeSummary:
        """The summary of an array or text probe (anything with these attributes)."""
        names = getattr(probe, "class_names", None)
        return cls(
            name=probe.name, fingerprint=probe.fingerprint, n_samples=int(probe.n_samples),
            kind=probe.kind, targets=np.asarray(probe.targets), labels=probe.labels,
            num_classes=probe.num_classes, class_names=tuple(names) if names else None,
        )

    def to_json_dict(self) -> dict[str, Any]:
        """The ``probe`` attribute of a store."""
        return {
            "name": self.name, "fingerprint": self.fingerprint, "n_samples": self.n_samples,
            "kind": self.kind, "num_classes": self.num_classes,
            **({"class_names": list(self.class_names)} if self.class_names else {}),
        }


@dataclass(frozen=True)
class VariableSpec:
    """A per-step store variable that a step extension declares.

    ``dims`` starts with ``"step"``; the other dimensions are the store's own (``layer``,
    ``sample``, ``target``, ``gram_i``, ``gram_j``, ``feature``) and take its sizes. Values
    not written read as ``fill``.
    """

    name: str
    dims: tuple[str, ...]
    dtype: str = "float64"
    fill: float | int | bool = float("nan")
    attrs: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.dims or self.dims[0] != "step":
            raise ValueError(f"variable {self.name!r}: dims must start with 'step', got {self.dims}")


__all__ = ["PARAMETER_KIND", "LayerInfo", "ProbeSummary", "VariableSpec", "parameter_input_dims",
           "parameter_kind"]
