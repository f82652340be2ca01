"""Weight-Gram spectra and dynamics over a store: the ``gram`` spec."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import xarray as xr

from flq_audit.metrics._graph import GroupContext, group_dataset
from flq_audit.metrics._kernels.gram import gram_cosine, gram_drift, gram_spectrum
from flq_audit.metrics._lazy import layer_grams
from flq_audit.metrics._spec import Block, MetricSpec, Output

TOP_K = 8
REFERENCE = "docs/concepts.md#gram-spectrum-and-drift"
OUTPUTS = {
    "gram_top_eigenvalues": Output("top eigenvalues of WᵀW", dims=("eigen",),
                                   sizes={"eigen": TOP_K}, reference=REFERENCE),
    "gram_effective_rank": Output("exp(spectral entropy) of WᵀW", reference=REFERENCE),
    "gram_stable_rank": Output("tr(WᵀW) / λ_max", reference=REFERENCE),
}


def spectrum_kernel(block: Block, options: None) -> tuple[np.ndarray, float, float]:
    assert block.gram is not None
    return gram_spectrum(block.gram, top_k=TOP_K)


def _pairwise(func: Callable[[np.ndarray, np.ndarray], float]):
    def kernel(a: np.ndarray, b: np.ndarray) -> float:
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            return np.nan
        return func(a, b)
    return kernel


def previous_step(gram: xr.DataArray) -> xr.DataArray:
    """Each step's previous stored step (the first step: NaN), built by indexing rather than
    ``shift``, whose padding fails on dask arrays of one step."""
    count = gram.sizes["step"]
    previous = gram.isel(step=np.maximum(np.arange(count) - 1, 0))
    previous = previous.assign_coords(step=gram["step"])
    first = xr.DataArray(np.arange(count) == 0, dims="step", coords={"step": gram["step"]})
    return previous.where(~first)


def _drift_and_cosine(context: GroupContext) -> xr.Dataset:
    """Per layer, on its Grams sliced to ``gram_width``; stacked on the layer axis."""
    ds, out = context.ds, context.blocks
    assert out is not None
    core = [["gram_i", "gram_j"], ["gram_i", "gram_j"]]
    texts = {"gram_drift": "‖G_t − G_prev‖_F / ‖G_prev‖_F (previous stored step)",
             "gram_cosine_to_final": "⟨G_t, G_final⟩_F / (‖G_t‖_F ‖G_final‖_F)"}
    values: dict[str, list[xr.DataArray]] = {name: [] for name in texts}
    for gram in layer_grams(ds):
        pairs = {"gram_drift": (previous_step(gram), gram, gram_drift),
                 "gram_cosine_to_final": (gram, gram.isel(step=-1, drop=True), gram_cosine)}
        for name, (a, b, func) in pairs.items():
            values[name].append(xr.apply_ufunc(
                _pairwise(func), a, b, input_core_dims=core, vectorize=True,
                dask="parallelized", keep_attrs=False, output_dtypes=[np.float64]))
    out = out.copy()
    for name, text in texts.items():
        out[name] = xr.concat(values[name], dim=ds["layer"], coords="minimal",
                              compat="override", join="override").transpose("step", "layer")
        out[name] = out[name].where(context.done).assign_attrs(long_name=text,
                                                               reference=REFERENCE)
    return out


SPEC = MetricSpec(
    group="gram", needs=frozenset({"gram"}), outputs=OUTPUTS, kernel=spectrum_kernel,
    build=_drift_and_cosine, per_step=True,
    trajectory=frozenset({"gram_drift", "gram_cosine_to_final"}),
    description="gram_top_eigenvalues, gram_effective_rank, gram_stable_rank, gram_drift, "
    "gram_cosine_to_final",
)


def gram_dataset(ds: xr.Dataset) -> xr.Dataset:
    """Top-k eigenvalues, effective and stable rank, drift to the previous stored step and
    cosine similarity to the final step's Gram, per (step, layer)."""
    return group_dataset(SPEC, GroupContext(ds, None))
