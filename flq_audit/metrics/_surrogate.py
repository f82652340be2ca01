"""Surrogate, norm and alignment over a store: the ``surrogate`` spec, lazy per (step, layer)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from flq_audit.metrics._graph import GroupContext, group_dataset
from flq_audit.metrics._kernels.moments import Moments
from flq_audit.metrics._kernels.surrogate import _surrogate_compute
from flq_audit.metrics._lazy import LayerMoments
from flq_audit.metrics._spec import Block, MetricSpec, Output

REFERENCE = "docs/concepts.md#surrogate-norm-and-alignment"
OUTPUTS = {
    "surrogate": Output("tr(Y_cᵀ Z Zᵀ Y_c), Z = H Wᵀ (paper scale)", reference=REFERENCE),
    "surrogate_per_class": Output("surrogate / C (reference-code scale)", reference=REFERENCE),
    "norm": Output("‖Z‖²_F = tr(WᵀW HᵀH), bias-free pre-activation energy",
                   reference=REFERENCE),
    "alignment": Output("tr(Y_cᵀZZᵀY_c) / (‖ZᵀZ‖_F ‖Y_cᵀY_c‖_F) in [0, 1]", "1",
                        reference=REFERENCE),
}


def surrogate_kernel(block: Block, options: None) -> tuple[float, float, float, float]:
    """Layers whose Gram does not live in the captured feature space (convolutions: patch
    space, ``gram_width != width``) are NaN."""
    assert isinstance(block.moments, Moments) and block.form is not None  # primal only
    if block.width != block.gram_width:
        return np.nan, np.nan, np.nan, np.nan
    r = _surrogate_compute(block.moments, block.form)
    return r.surrogate, r.surrogate_per_class, r.norm, r.alignment


SPEC = MetricSpec(
    group="surrogate", needs=frozenset({"moments", "gram"}), outputs=OUTPUTS,
    kernel=surrogate_kernel, per_step=True, description="surrogate, surrogate_per_class, norm, alignment",
)


def surrogate_dataset(ds: xr.Dataset, *, moments: LayerMoments | None = None) -> xr.Dataset:
    """Lazy ``surrogate`` (paper scale), ``surrogate_per_class`` (reference ÷ C), ``norm`` and
    ``alignment`` ∈ [0, 1]."""
    return group_dataset(SPEC, GroupContext(ds, None, shared_moments=moments))
