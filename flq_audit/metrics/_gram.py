"""Weight-Gram spectra and dynamics over a store."""

from __future__ import annotations

import numpy as np
import xarray as xr

from flq_audit.metrics._kernels.gram import gram_cosine, gram_drift, gram_spectrum
from flq_audit.metrics._lazy import coarse_steps

TOP_K = 8


def gram_dataset(ds: xr.Dataset, *, top_k: int = TOP_K) -> xr.Dataset:
    """Top-k eigenvalues, effective and stable rank, drift to the previous stored step and
    cosine similarity to the final step's Gram, per (step, layer)."""
    gram = coarse_steps(ds["gram"])

    def spectrum(gram: np.ndarray, width: np.ndarray):
        g = gram[: int(width), : int(width)]
        if not np.isfinite(g).all():
            return np.full(top_k, np.nan), np.nan, np.nan
        return gram_spectrum(g, top_k=top_k)

    top, effective, stable = xr.apply_ufunc(
        spectrum, gram, ds["gram_width"],
        input_core_dims=[["gram_i", "gram_j"], []], output_core_dims=[["eigen"], [], []],
        vectorize=True, dask="parallelized", keep_attrs=False, output_dtypes=[np.float64] * 3,
        dask_gufunc_kwargs={"output_sizes": {"eigen": top_k}},
    )
    final = gram.isel(step=-1, drop=True)
    previous = gram.shift(step=1)

    def pairwise(func):
        def kernel(a: np.ndarray, b: np.ndarray, width: np.ndarray) -> float:
            w = int(width)
            a, b = a[:w, :w], b[:w, :w]
            if not (np.isfinite(a).all() and np.isfinite(b).all()):
                return np.nan
            return func(a, b)
        return kernel

    core = [["gram_i", "gram_j"], ["gram_i", "gram_j"], []]
    drift = xr.apply_ufunc(
        pairwise(gram_drift), previous, gram, ds["gram_width"], input_core_dims=core,
        vectorize=True, dask="parallelized", keep_attrs=False, output_dtypes=[np.float64],
    )
    cosine = xr.apply_ufunc(
        pairwise(gram_cosine), gram, final, ds["gram_width"], input_core_dims=core,
        vectorize=True, dask="parallelized", keep_attrs=False, output_dtypes=[np.float64],
    )
    done = ds["done"].astype(bool)
    return xr.Dataset({
        "gram_top_eigenvalues": top.where(done).assign_attrs(long_name="top eigenvalues of WᵀW"),
        "gram_effective_rank": effective.where(done).assign_attrs(
            long_name="exp(spectral entropy) of WᵀW"),
        "gram_stable_rank": stable.where(done).assign_attrs(long_name="tr(WᵀW) / λ_max"),
        "gram_drift": drift.where(done).assign_attrs(
            long_name="‖G_t − G_prev‖_F / ‖G_prev‖_F (previous stored step)"),
        "gram_cosine_to_final": cosine.where(done).assign_attrs(
            long_name="⟨G_t, G_final⟩_F / (‖G_t‖_F ‖G_final‖_F)"),
    })
