"""Weight-Gram spectra and dynamics over a store: the ``gram`` spec."""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr

from flq_audit._gram_forms import DENSE, FACTOR, SPECTRUM, form_of
from flq_audit.errors import FlqAuditWarning
from flq_audit.metrics._graph import GroupContext, group_dataset
from flq_audit.metrics._kernels.gram import spectrum_summary
from flq_audit.metrics._lazy import LayerGram, layer_grams
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
    """From the eigenvalues of whichever form the layer's Gram is stored in."""
    assert block.form is not None
    return spectrum_summary(block.form.eigenvalues(), top_k=TOP_K)


def _comparisons(form: str):
    """``(‖G_t‖_F, ‖G_t − G_prev‖_F, ⟨G_t, G_final⟩_F)`` of one (step, layer) from the three
    Grams it is compared with, each NaN where an input it needs is not finite."""
    def kernel(previous: np.ndarray, current: np.ndarray, final: np.ndarray,
               ) -> tuple[float, float, float]:
        if not np.isfinite(current).all():
            return np.nan, np.nan, np.nan
        g = form_of(form, current)
        distance = (g.distance(form_of(form, previous)) if np.isfinite(previous).all()
                    else np.nan)
        inner = g.inner(form_of(form, final)) if np.isfinite(final).all() else np.nan
        return g.frobenius(), distance, inner
    return kernel


def previous_step(gram: xr.DataArray) -> xr.DataArray:
    """Each step's previous stored step (the first step: NaN), built by indexing rather than
    ``shift``, whose padding fails on dask arrays of one step."""
    count = gram.sizes["step"]
    previous = gram.isel(step=np.maximum(np.arange(count) - 1, 0))
    previous = previous.assign_coords(step=gram["step"])
    first = xr.DataArray(np.arange(count) == 0, dims="step", coords={"step": gram["step"]})
    return previous.where(~first)


def _layer_drift_and_cosine(layer: LayerGram) -> tuple[xr.DataArray, xr.DataArray]:
    """One layer's drift and cosine over steps from one pass over its Grams: each step's
    norm, distance to the previous step and inner product with the final step are computed
    once; the ratios are taken between those per-step values (no Gram is formed twice)."""
    gram = layer.values
    core = [list(layer.core)] * 3
    norm, distance, inner = xr.apply_ufunc(
        _comparisons(layer.form), previous_step(gram), gram, gram.isel(step=-1, drop=True),
        input_core_dims=core, output_core_dims=[[], [], []], vectorize=True,
        dask="parallelized", keep_attrs=False, output_dtypes=[np.float64] * 3)
    base = previous_step(norm)
    drift = (distance / base).where(base > 0)
    denominator = norm * norm.isel(step=-1, drop=True)
    return drift, (inner / denominator).where(denominator > 0)


def _drift_and_cosine(context: GroupContext) -> xr.Dataset:
    """Per layer, on its Grams sliced to ``gram_width``; stacked on the layer axis."""
    ds, out = context.ds, context.blocks
    assert out is not None
    texts = {"gram_drift": "‖G_t − G_prev‖_F / ‖G_prev‖_F (previous stored step)",
             "gram_cosine_to_final": "⟨G_t, G_final⟩_F / (‖G_t‖_F ‖G_final‖_F)"}
    values: dict[str, list[xr.DataArray]] = {name: [] for name in texts}
    grams = layer_grams(ds)
    _warn_whole_gram_needed(grams, list(texts))
    for layer in grams:
        if layer.form not in (DENSE, FACTOR):
            for name in texts:
                values[name].append(xr.full_like(ds["step"], np.nan, dtype=np.float64))
            continue
        for name, value in zip(texts, _layer_drift_and_cosine(layer), strict=True):
            values[name].append(value)
    out = out.copy()
    for name, text in texts.items():
        out[name] = xr.concat(values[name], dim=ds["layer"], coords="minimal",
                              compat="override", join="override").transpose("step", "layer")
        out[name] = out[name].where(context.done).assign_attrs(long_name=text,
                                                               reference=REFERENCE)
    return out


def _warn_whole_gram_needed(grams: list[LayerGram], names: list[str]) -> None:
    """A store of eigenvalues only leaves the outputs that compare Grams as NaN: say so."""
    if any(layer.form == SPECTRUM for layer in grams):
        warnings.warn(f"{', '.join(names)} compare whole Grams: NaN for the layers this store "
                      "keeps as eigenvalues only (--grams spectrum); audit with --grams "
                      "compact (or full) to compute them", FlqAuditWarning, stacklevel=3)


SPEC = MetricSpec(
    group="gram", needs=frozenset({"gram"}), outputs=OUTPUTS, kernel=spectrum_kernel,
    build=_drift_and_cosine, per_step=True, gram_forms=frozenset({DENSE, FACTOR, SPECTRUM}),
    trajectory=frozenset({"gram_drift", "gram_cosine_to_final"}),
    description="gram_top_eigenvalues, gram_effective_rank, gram_stable_rank, gram_drift, "
    "gram_cosine_to_final",
)


def gram_dataset(ds: xr.Dataset) -> xr.Dataset:
    """Top-k eigenvalues, effective and stable rank, drift to the previous stored step and
    cosine similarity to the final step's Gram, per (step, layer)."""
    return group_dataset(SPEC, GroupContext(ds, None))
