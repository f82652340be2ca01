"""Metrics: pure float64 kernels, declarative group specs, one lazy engine over a store."""

from __future__ import annotations

from flq_audit.metrics import _builtin  # noqa: F401  (registers the built-in groups)
from flq_audit.metrics._collapse import collapse_dataset
from flq_audit.metrics._dynamics import dynamics_dataset
from flq_audit.metrics._engine import require_complete, run_metrics
from flq_audit.metrics._gram import gram_dataset
from flq_audit.metrics._kernels.collapse import neural_collapse
from flq_audit.metrics._kernels.gram import gram_cosine, gram_drift, gram_spectrum
from flq_audit.metrics._kernels.surrogate import surrogate
from flq_audit.metrics._kernels.target_linearity import target_linearity
from flq_audit.metrics._lazy import layer_moments
from flq_audit.metrics._options import TLOptions
from flq_audit.metrics._spec import (
    ENTRY_POINT_GROUP,
    Block,
    MetricSpec,
    Output,
    register_metric,
    registry,
)
from flq_audit.metrics._stamp import incomplete_groups
from flq_audit.metrics._streaming import StreamingMetric, Surrogate, TargetLinearity
from flq_audit.metrics._surrogate import surrogate_dataset
from flq_audit.metrics._target_linearity import cutoff_sensitive, target_linearity_dataset


def __getattr__(name: str) -> object:
    if name == "METRICS":  # the registered groups and what each stores
        return {group: spec.description for group, spec in registry().items()}
    raise AttributeError(f"module 'flq_audit.metrics' has no attribute {name!r}")


__all__ = [
    "ENTRY_POINT_GROUP",
    "METRICS",
    "Block",
    "MetricSpec",
    "Output",
    "StreamingMetric",
    "Surrogate",
    "TLOptions",
    "TargetLinearity",
    "collapse_dataset",
    "cutoff_sensitive",
    "dynamics_dataset",
    "gram_cosine",
    "gram_dataset",
    "gram_drift",
    "gram_spectrum",
    "incomplete_groups",
    "layer_moments",
    "neural_collapse",
    "register_metric",
    "registry",
    "require_complete",
    "run_metrics",
    "surrogate",
    "surrogate_dataset",
    "target_linearity",
    "target_linearity_dataset",
]
