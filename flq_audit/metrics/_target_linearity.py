"""Target Linearity over a store: lazy (dask), one value per (step, layer)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from flq_audit.metrics._kernels.moments import Moments
from flq_audit.metrics._kernels.target_linearity import _target_linearity_compute
from flq_audit.metrics._lazy import MOMENT_I, MOMENT_J, layer_moments


def target_linearity_dataset(
    ds: xr.Dataset,
    *,
    ridge: float = 0.0,
    pca: int | None = None,
    pca_threshold: int = 1000,
    denominator: str = "column",
    moments: xr.DataArray | None = None,
) -> xr.Dataset:
    """Lazy TL per (step, layer) with the counts it rests on.

    Returns a Dataset with ``target_linearity``, ``n_samples``, ``n_features`` (after PCA),
    ``rank`` and ``chance_floor`` (= rank / n_samples, the expected TL of features
    independent of the targets). Steps that are not done are NaN.
    """
    if ridge < 0:
        from flq_audit.errors import MetricError

        raise MetricError(f"ridge must be >= 0, got {ridge}")
    moments = layer_moments(ds) if moments is None else moments
    k = int(moments.attrs["n_targets"])

    def kernel(matrix: np.ndarray, width: np.ndarray) -> tuple[float, float, float, float]:
        m = Moments.from_matrix(matrix, int(width), k)
        if not np.isfinite(m.hh).all():
            return np.nan, np.nan, np.nan, np.nan
        tl, rank, used = _target_linearity_compute(
            m, ridge=ridge, pca=pca, pca_threshold=pca_threshold, denominator=denominator
        )
        return tl, float(m.n), float(used), float(rank)

    tl, n, used, rank = xr.apply_ufunc(
        kernel, moments, ds["width"],
        input_core_dims=[[MOMENT_I, MOMENT_J], []],
        output_core_dims=[[], [], [], []],
        vectorize=True, dask="parallelized", keep_attrs=False,
        output_dtypes=[np.float64] * 4,
    )
    done = ds["done"].astype(bool)
    params = {"ridge": float(ridge), "pca": -1 if pca is None else int(pca),
              "pca_threshold": int(pca_threshold), "intercept": "none",
              "target_centering": "column", "denominator": denominator}
    out = xr.Dataset({
        "target_linearity": tl.where(done).assign_attrs(
            long_name="Target Linearity (in-sample R² of a no-intercept linear fit)",
            units="1", reference="arXiv 2605.06258 Def. 2", **params,
        ),
        "n_samples": n.where(done).assign_attrs(long_name="probe samples the fit rests on"),
        "n_features": used.where(done).assign_attrs(long_name="features entering the fit"),
        "rank": rank.where(done).assign_attrs(long_name="numerical rank of HᵀH"),
    })
    out["chance_floor"] = (out["rank"] / out["n_samples"]).assign_attrs(
        long_name="expected TL of target-independent features (rank / n_samples)", units="1"
    )
    return out
