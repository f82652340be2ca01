"""Metrics: pure float64 kernels and lazy xarray/dask wrappers over a store."""

from __future__ import annotations

from flq_audit.metrics._collapse import collapse_dataset
from flq_audit.metrics._dynamics import dynamics_dataset
from flq_audit.metrics._gram import gram_dataset
from flq_audit.metrics._kernels.collapse import neural_collapse
from flq_audit.metrics._kernels.gram import gram_cosine, gram_drift, gram_spectrum
from flq_audit.metrics._kernels.surrogate import surrogate
from flq_audit.metrics._kernels.target_linearity import target_linearity
from flq_audit.metrics._lazy import layer_moments
from flq_audit.metrics._suite import METRICS
from flq_audit.metrics._surrogate import surrogate_dataset
from flq_audit.metrics._target_linearity import target_linearity_dataset

__all__ = [
    "METRICS",
    "collapse_dataset",
    "dynamics_dataset",
    "gram_cosine",
    "gram_dataset",
    "gram_drift",
    "gram_spectrum",
    "layer_moments",
    "neural_collapse",
    "surrogate",
    "surrogate_dataset",
    "target_linearity",
    "target_linearity_dataset",
]
