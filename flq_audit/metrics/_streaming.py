"""Streaming metric objects: ``update()`` per sample block, ``merge()``, ``compute()``.

They hold the augmented moments of :mod:`flq_audit.metrics._kernels.moments` (sums over
sample blocks, so any chunking and any merge order give the same value) and call the same
per-block kernel as the store engine. A training loop can use them without a store::

    tl = TargetLinearity()
    for h, y in batches:
        tl.update(h, y)
    tl.compute()
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from flq_audit._gram_forms import DenseGram, GramForm, weight_form
from flq_audit.errors import MetricError
from flq_audit.metrics._kernels.moments import Moments, _moments_update
from flq_audit.metrics._kernels.surrogate import SurrogateResult
from flq_audit.metrics._options import TLOptions
from flq_audit.metrics._spec import Block, MetricSpec, get_spec


class StreamingMetric:
    """Any registered group whose kernel reads moments (and, optionally, a weight Gram)."""

    def __init__(self, group: str | MetricSpec, options: object | None = None, *,
                 gram: npt.ArrayLike | GramForm | None = None) -> None:
        self.spec = group if isinstance(group, MetricSpec) else get_spec(group)
        if self.spec.kernel is None or self.spec.needs - {"moments", "gram"}:
            raise MetricError(f"metric {self.spec.group!r} is not a per-block metric of "
                              f"moments and Grams (needs {sorted(self.spec.needs)})")
        if "gram" in self.spec.needs and gram is None:
            raise MetricError(f"metric {self.spec.group!r} needs the weight Gram: pass gram=WᵀW")
        self.options = options if options is not None else self.spec.make_options({})
        self.form: GramForm | None = (gram if isinstance(gram, GramForm) or gram is None
                                      else DenseGram(gram))
        self._total: npt.NDArray[np.float64] | None = None
        self._shape: tuple[int, int] | None = None

    def update(self, h: npt.ArrayLike, y: npt.ArrayLike) -> StreamingMetric:
        """Add one block of samples: features ``h`` (n × d), targets ``y`` (n × k or n)."""
        h = np.asarray(h, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64).reshape(h.shape[0], -1)
        shape = (h.shape[1], y.shape[1])
        if self._shape is not None and shape != self._shape:
            raise MetricError(f"block of {shape[0]} features and {shape[1]} targets; earlier "
                              f"blocks had {self._shape[0]} and {self._shape[1]}")
        block = _moments_update(h, y)
        self._total = block if self._total is None else self._total + block
        self._shape = shape
        return self

    def merge(self, other: StreamingMetric) -> StreamingMetric:
        """Add another object's samples (e.g. from another worker); returns ``self``."""
        if other.spec.group != self.spec.group or other.options != self.options:
            raise MetricError("only objects of the same metric and options can be merged")
        if other._total is None:
            return self
        if self._total is None:
            self._total, self._shape = other._total.copy(), other._shape
            return self
        if other._shape != self._shape:
            raise MetricError(f"cannot merge {other._shape} features/targets into {self._shape}")
        self._total = self._total + other._total
        return self

    def compute_all(self) -> dict[str, Any]:
        """Every output of the group, by name (the store's variable names)."""
        if self._total is None or self._shape is None:
            raise MetricError(f"{type(self).__name__}.compute() before any update()")
        width, k = self._shape
        moments = Moments.from_matrix(self._total, width, k)
        gram_width = width if self.form is None else self.form.width
        kernel = self.spec.kernel
        assert kernel is not None  # __init__ refuses a spec without one
        values = kernel(Block(moments, self.form, width, gram_width), self.options)
        return dict(zip(self.spec.outputs, values, strict=True))

    def compute(self) -> Any:
        """The group's first output."""
        return next(iter(self.compute_all().values()))


class TargetLinearity(StreamingMetric):
    """Target Linearity of streamed (features, targets) blocks; see docs/concepts.md#target-linearity."""

    def __init__(self, options: TLOptions | None = None, **params: Any) -> None:
        super().__init__("tl", options or TLOptions(**params))

    def compute(self) -> float:
        return float(self.compute_all()["target_linearity"])


class Surrogate(StreamingMetric):
    """Surrogate, norm and alignment for a fixed weight ``W`` (or its Gram ``WᵀW``)."""

    def __init__(self, weight: npt.ArrayLike | None = None, *,
                 gram: npt.ArrayLike | None = None) -> None:
        if (weight is None) == (gram is None):
            raise MetricError("pass exactly one of weight=W or gram=WᵀW")
        form: GramForm = weight_form(weight) if weight is not None else DenseGram(gram)  # type: ignore[arg-type]  # one of the two is given
        super().__init__("surrogate", gram=form)

    def compute(self) -> SurrogateResult:
        return SurrogateResult(*(float(v) for v in self.compute_all().values()))


__all__ = ["StreamingMetric", "Surrogate", "TargetLinearity"]
