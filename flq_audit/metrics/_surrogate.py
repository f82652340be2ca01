"""Surrogate, norm and alignment over a store: lazy, one value per (step, layer)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from flq_audit.metrics._kernels.moments import Moments
from flq_audit.metrics._kernels.surrogate import _surrogate_compute
from flq_audit.metrics._lazy import MOMENT_I, MOMENT_J, coarse_steps, layer_moments


def surrogate_dataset(ds: xr.Dataset, *, moments: xr.DataArray | None = None) -> xr.Dataset:
    """Lazy ``surrogate`` (paper scale), ``surrogate_per_class`` (reference ÷ C), ``norm`` and
    ``alignment`` ∈ [0, 1]. Layers whose Gram does not live in the captured feature space
    (convolutions: patch space) are NaN."""
    moments = layer_moments(ds) if moments is None else moments
    k = int(moments.attrs["n_targets"])

    def kernel(matrix: np.ndarray, gram: np.ndarray, width: np.ndarray, gram_width: np.ndarray):
        width, gram_width = int(width), int(gram_width)
        m = Moments.from_matrix(matrix, width, k)
        g = gram[:gram_width, :gram_width]
        if width != gram_width or not (np.isfinite(m.hh).all() and np.isfinite(g).all()):
            return np.nan, np.nan, np.nan, np.nan
        r = _surrogate_compute(m, g)
        return r.surrogate, r.surrogate_per_class, r.norm, r.alignment

    outputs = xr.apply_ufunc(
        kernel, moments, coarse_steps(ds["gram"]), ds["width"], ds["gram_width"],
        input_core_dims=[[MOMENT_I, MOMENT_J], ["gram_i", "gram_j"], [], []],
        output_core_dims=[[], [], [], []], vectorize=True, dask="parallelized", keep_attrs=False,
        output_dtypes=[np.float64] * 4,
    )
    done = ds["done"].astype(bool)
    names = {
        "surrogate": "tr(Y_cᵀ Z Zᵀ Y_c), Z = H Wᵀ (paper scale)",
        "surrogate_per_class": "surrogate / C (reference-code scale)",
        "norm": "‖Z‖²_F = tr(WᵀW HᵀH), bias-free pre-activation energy",
        "alignment": "tr(Y_cᵀZZᵀY_c) / (‖ZᵀZ‖_F ‖Y_cᵀY_c‖_F) in [0, 1]",
    }
    return xr.Dataset({
        name: out.where(done).assign_attrs(long_name=text, reference="paper-notes §4.5-4.6")
        for (name, text), out in zip(names.items(), outputs, strict=True)
    })
