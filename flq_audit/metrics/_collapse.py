"""Neural collapse NC1-NC4 over a store: the ``nc`` spec, lazy per (step, layer)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from flq_audit.metrics._graph import GroupContext, group_dataset
from flq_audit.metrics._kernels.collapse import _collapse_compute
from flq_audit.metrics._kernels.moments import Moments
from flq_audit.metrics._lazy import MOMENT_I, MOMENT_J, LayerMoments, layer_moments
from flq_audit.metrics._spec import Block, MetricSpec, Output

REFERENCE = "Papyan, Han & Donoho 2020 (PNAS 117:24652); docs/concepts.md#neural-collapse-nc"
NAMES = {
    "nc1": "NC1 = tr(Σ_W Σ_B⁺)/C, Σ_B unweighted over classes (within-class variability collapse)",
    "nc2_equinorm": "std_c ‖μ_c − μ_G‖ / mean_c ‖μ_c − μ_G‖ (NC2 equinorm, ddof=0)",
    "nc2_equiangularity": "mean_{c≠c'} |cos(μ_c − μ_G, μ_c' − μ_G) + 1/(C−1)| (NC2 equiangularity)",
    "nc2_etf_error": "‖M̃ᵀM̃/‖M̃ᵀM̃‖_F − (I − 11ᵀ/C)/√(C−1)‖_F (distance to a simplex ETF)",
    "nc_n_classes": "classes present in the probe (n_c > 0) that NC rests on",
}
OUTPUTS = {name: Output(text, None if name == "nc_n_classes" else "1", reference=REFERENCE)
           for name, text in NAMES.items()}


def collapse_kernel(block: Block, options: None) -> tuple[float, ...]:
    assert isinstance(block.moments, Moments)  # primal only
    r = _collapse_compute(block.moments)
    n_classes = float(r.n_classes) if r.n_classes else np.nan  # 0: targets not one-hot
    return r.nc1, r.nc2_equinorm, r.nc2_equiangularity, r.nc2_etf_error, n_classes


def _class_probe(context: GroupContext, with_classifier: bool) -> xr.Dataset:
    """Continuous targets give NaN; absent classes are listed in ``excluded_classes``."""
    ds, out = context.ds, context.blocks
    assert out is not None
    kind = ds["targets"].attrs.get("kind")
    excluded: list[int] = []
    if kind == "continuous":
        out = xr.full_like(out, np.nan)
    else:
        counts = np.nansum(np.asarray(ds["targets"].values, dtype=np.float64), axis=0)
        excluded = [int(c) for c in np.flatnonzero(counts == 0)]
    extra = {"target_kind": str(kind or "unknown"), "excluded_classes": excluded}
    out = xr.Dataset({name: var.assign_attrs(OUTPUTS[str(name)].attrs(), **extra)
                      for name, var in out.data_vars.items()})
    if not with_classifier:
        return out
    classifier = classifier_collapse_dataset(ds, moments=context.moments)
    return xr.merge([out, classifier], combine_attrs="drop_conflicts")


SPEC = MetricSpec(
    group="nc", needs=frozenset({"moments"}), outputs=OUTPUTS,
    kernel=collapse_kernel, build=lambda context: _class_probe(context, True), per_step=True,
    description="nc1, nc2_equinorm, nc2_equiangularity, nc2_etf_error, nc_n_classes (class "
    "probes); nc3, nc4 per step for the classifier layer",
)


def collapse_dataset(ds: xr.Dataset, *, moments: LayerMoments | None = None) -> xr.Dataset:
    """Lazy ``nc1``, ``nc2_equinorm``, ``nc2_equiangularity``, ``nc2_etf_error`` and
    ``nc_n_classes`` per (step, layer), from the streamed moments of a class probe.

    Classes without probe samples are excluded (``C`` counts present classes) and listed in
    each variable's ``excluded_classes`` attribute. Steps that are not done, and every value
    of a store whose ``targets`` are continuous (``kind='continuous'``), are NaN.
    """
    context = GroupContext(ds, None, shared_moments=moments)
    context.blocks = group_dataset(
        MetricSpec("nc", frozenset({"moments"}), OUTPUTS, kernel=collapse_kernel), context)
    return _class_probe(context, False)


def classifier_collapse_dataset(
    ds: xr.Dataset, *, moments: LayerMoments | None = None
) -> xr.Dataset:
    """Lazy ``nc3`` (self-duality) and ``nc4`` (NCC disagreement) per step, for the layer
    whose weight is the classifier (the store's ``classifier`` attribute). Empty when the
    store has no classifier weights or predictions."""
    import dask.array as da

    from flq_audit.metrics._kernels.duality import _ncc_disagreement, _self_duality, class_means

    layer = ds.attrs.get("classifier")
    if not layer or "classifier_weight" not in ds or ds["targets"].attrs.get("kind") != "classes":
        return xr.Dataset()
    moments = layer_moments(ds) if moments is None else moments
    k = int(moments.attrs["n_targets"])
    width = int(ds["width"].sel(layer=layer))
    m_layer = moments.sel(layer=layer, drop=True)
    done = ds["done"].astype(bool)

    def nc3(matrix: np.ndarray, weight: np.ndarray) -> float:
        return _self_duality(Moments.from_matrix(matrix, width, k), weight[:, :width])

    out = xr.Dataset()
    out["nc3"] = xr.apply_ufunc(
        nc3, m_layer, ds["classifier_weight"],
        input_core_dims=[[MOMENT_I, MOMENT_J], ["target", "gram_j"]], vectorize=True,
        dask="parallelized", keep_attrs=False, output_dtypes=[np.float64],
    ).where(done).assign_attrs(
        long_name="NC3 ‖W/‖W‖ − M̃ᵀ/‖M̃‖‖_F (self-duality of classifier and class means)",
        layer=layer, reference=REFERENCE)
    if "prediction" not in ds:
        return out
    means = xr.apply_ufunc(
        lambda matrix: class_means(Moments.from_matrix(matrix, width, k)), m_layer,
        input_core_dims=[[MOMENT_I, MOMENT_J]], output_core_dims=[["target", "feature_w"]],
        vectorize=True, dask="parallelized", output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {"target": k, "feature_w": width}},
    ).data
    acts = ds["activations"].sel(layer=layer, drop=True).data[:, :, :width]
    preds = ds["prediction"].data.astype(np.float64)
    preds = preds.rechunk(acts.chunks[:2]) if isinstance(preds, da.Array) else da.from_array(
        preds, chunks=acts.chunks[:2])
    means = means if isinstance(means, da.Array) else da.from_array(means)

    def block(h: np.ndarray, mu: np.ndarray, p: np.ndarray) -> np.ndarray:
        return np.stack([_ncc_disagreement(h[i], mu[i], p[i]) for i in range(h.shape[0])])

    flags = da.blockwise(block, "sn", acts, "snf", means, "scf", preds, "sn",
                         dtype=np.float64, concatenate=True)
    out["nc4"] = xr.DataArray(da.nanmean(flags, axis=1), dims=("step",),
                              coords={"step": ds["step"]}).where(done).assign_attrs(
        long_name="NC4: fraction of samples whose nearest class mean ≠ the model's prediction",
        layer=layer, reference=REFERENCE)
    return out
