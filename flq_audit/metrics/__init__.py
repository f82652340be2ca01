"""Metrics: pure float64 kernels and lazy xarray/dask wrappers over a store."""

from __future__ import annotations

from flq_audit.metrics._kernels.target_linearity import target_linearity
from flq_audit.metrics._lazy import layer_moments
from flq_audit.metrics.target_linearity import target_linearity_dataset

#: Metric names the CLI accepts.
METRICS = ("tl",)

__all__ = ["METRICS", "layer_moments", "target_linearity", "target_linearity_dataset"]
