"""Plain records the store schema is built from (no torch: the read path imports these)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LayerInfo:
    """A captured layer: its module name, kind, activation width and Gram width."""

    name: str
    kind: str
    width: int
    gram_width: int


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


__all__ = ["LayerInfo", "ProbeSummary"]
