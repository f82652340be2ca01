"""Metrics: pure float64 kernels and lazy xarray/dask wrappers over a store."""

from __future__ import annotations

from flq_audit.metrics._kernels.gram import gram_cosine, gram_drift, gram_spectrum
from flq_audit.metrics._kernels.surrogate import surrogate as _surrogate
from flq_audit.metrics._kernels.target_linearity import target_linearity as _target_linearity
from flq_audit.metrics._lazy import layer_moments
from flq_audit.metrics._suite import METRICS
from flq_audit.metrics.dynamics import dynamics_dataset
from flq_audit.metrics.gram import gram_dataset
from flq_audit.metrics.surrogate import surrogate_dataset
from flq_audit.metrics.target_linearity import target_linearity_dataset

# Importing the submodules ``surrogate`` and ``target_linearity`` binds the modules to these
# names on the package; rebind the public names to the functions.
surrogate = _surrogate
target_linearity = _target_linearity

__all__ = [
    "METRICS",
    "dynamics_dataset",
    "gram_cosine",
    "gram_dataset",
    "gram_drift",
    "gram_spectrum",
    "layer_moments",
    "surrogate",
    "surrogate_dataset",
    "target_linearity",
    "target_linearity_dataset",
]
