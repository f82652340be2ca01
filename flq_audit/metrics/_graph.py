"""The one lazy builder: a spec's per-(step, layer) kernel as a single ``xr.apply_ufunc``."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from flq_audit._gram_forms import NONE, GramForm, form_of
from flq_audit.metrics._kernels.moments import DualMoments, Moments, QRFactor
from flq_audit.metrics._lazy import (
    MOMENT_I,
    MOMENT_J,
    LayerMoments,
    layer_grams,
    layer_moments,
)
from flq_audit.metrics._spec import Block, MetricSpec

NONFINITE = "nonfinite"
_COUNTS: list[Counter[str]] = []
_COUNTS_LOCK = threading.Lock()


@contextmanager
def counting_blocks() -> Iterator[Counter[str]]:
    """Count, per group, the (step, layer) blocks whose kernel runs inside the ``with`` (in
    this process: the threads and synchronous schedulers); e.g. to see that a run after
    steps were added computed the new steps only."""
    counts: Counter[str] = Counter()
    with _COUNTS_LOCK:
        _COUNTS.append(counts)
    try:
        yield counts
    finally:
        with _COUNTS_LOCK:
            _COUNTS.remove(counts)


def _count_block(group: str) -> None:
    if _COUNTS:
        with _COUNTS_LOCK:
            for counts in _COUNTS:
                counts[group] += 1


@dataclass
class GroupContext:
    """What a spec's ``build`` sees: the store, shared moments, options, finished groups."""

    ds: xr.Dataset
    options: Any
    blocks: xr.Dataset | None = None
    groups: dict[str, xr.Dataset] = field(default_factory=dict)
    shared_moments: LayerMoments | None = None

    @property
    def moments(self) -> LayerMoments:
        if self.shared_moments is None:
            self.shared_moments = layer_moments(self.ds)
        return self.shared_moments

    @property
    def done(self) -> xr.DataArray:
        return self.ds["done"].astype(bool)


def _nan_like(spec: MetricSpec) -> tuple[Any, ...]:
    return tuple(np.full([out.sizes[d] for d in out.dims], np.nan) if out.dims else np.nan
                 for out in spec.outputs.values())


def block_dataset(spec: MetricSpec, context: GroupContext) -> xr.Dataset:
    """Lazy outputs of ``spec.kernel`` per (step, layer), NaN where a step is not done or an
    input is not finite, with each output's attributes.

    Each layer is its own graph at its own width: moments (or the dual kernel) of its width,
    its Gram sliced to ``gram_width`` (padding chunks are never read); the per-layer results
    are stacked on the ``layer`` axis.
    """
    assert spec.kernel is not None
    ds = context.ds
    with_moments, with_gram = "moments" in spec.needs, "gram" in spec.needs
    dual, qr = spec.accepts_dual(context.options), spec.wants_qr(context.options)
    if with_moments and context.shared_moments is None and (dual or qr):
        context.shared_moments = layer_moments(ds, dual=dual, qr=qr)
    widths = [int(w) for w in np.asarray(ds["width"].values)]
    gram_widths = [int(w) for w in np.asarray(
        (ds["gram_width"] if "gram_width" in ds else ds["width"]).values)]
    targets = np.asarray(ds["targets"].values, dtype=np.float64) if with_moments else None
    grams = layer_grams(ds) if with_gram else []
    per_layer = []
    for j, (width, g_width) in enumerate(zip(widths, gram_widths, strict=True)):
        inputs: list[xr.DataArray] = []
        core: list[list[str]] = []
        kind = "moments"
        if with_moments:
            moments = context.moments
            inputs.append(moments.per_layer[j])
            core.append([MOMENT_I, MOMENT_J])
            kind = "dual" if moments.is_dual(j) else "qr" if moments.is_qr(j) else kind
        if with_gram:
            inputs.append(grams[j].values)
            core.append(list(grams[j].core))
        if not inputs:  # a kernel of neither: still one call per step
            inputs.append(ds["step"])
            core.append([])
        form = grams[j].form if with_gram else NONE
        per_layer.append(_layer_outputs(spec, context.options, inputs, core,
                                        width, g_width, kind, targets, form))
    done = context.done
    layer = ds["layer"]
    return xr.Dataset({
        name: xr.concat([values[i] for values in per_layer], dim=layer, coords="minimal",
                        compat="override", join="override").transpose("step", "layer", ...)
        .where(done).assign_attrs(output.attrs())
        for i, (name, output) in enumerate(spec.outputs.items())
    })


def _layer_outputs(spec: MetricSpec, options: Any, inputs: list[xr.DataArray],
                   core: list[list[str]], width: int, g_width: int, kind: str,
                   targets: np.ndarray | None, form: str = NONE) -> tuple[xr.DataArray, ...]:
    """One layer's outputs over steps: the kernel applied per step (its Gram, when the
    spec needs one, in the layer's stored ``form``)."""
    assert spec.kernel is not None
    kernel = spec.kernel
    with_moments, with_gram = "moments" in spec.needs, "gram" in spec.needs
    k = 0 if targets is None else targets.shape[1]
    nan = _nan_like(spec)
    single = len(spec.outputs) == 1
    if single:
        nan = nan[0]

    def per_block(*arrays: np.ndarray) -> tuple[Any, ...]:
        _count_block(spec.group)
        position = 0
        moments: Moments | DualMoments | QRFactor | None = None
        gram: GramForm | None = None
        if with_moments:
            if kind != "moments":
                assert targets is not None
                moments = (DualMoments(arrays[0], targets, width) if kind == "dual"
                           else QRFactor(arrays[0], width, targets))
                finite = np.isfinite(arrays[0]).all()
            else:
                moments = Moments.from_matrix(arrays[0], width, k)
                finite = np.isfinite(moments.hh).all()
            position = 1
            if not finite:
                return nan
        if with_gram:
            values = np.asarray(arrays[position], dtype=np.float64)
            if form == NONE or not np.isfinite(values).all():
                return nan
            gram = form_of(form, values)
        outputs = tuple(kernel(Block(moments, gram, width, g_width), options))
        return outputs[0] if single else outputs

    out_dims = [list(o.dims) for o in spec.outputs.values()]
    sizes = {d: n for o in spec.outputs.values() for d, n in o.sizes.items()}
    results = xr.apply_ufunc(
        per_block, *inputs, input_core_dims=core, output_core_dims=out_dims,
        vectorize=True, dask="parallelized", keep_attrs=False,
        output_dtypes=[np.float64] * len(spec.outputs),
        dask_gufunc_kwargs={"output_sizes": sizes} if sizes else None,
    )
    return (results,) if single else tuple(results)


def group_dataset(spec: MetricSpec, context: GroupContext) -> xr.Dataset:
    """A group's lazy Dataset: its block outputs, then whatever its ``build`` adds."""
    context.blocks = block_dataset(spec, context) if spec.kernel is not None else None
    result = spec.build(context) if spec.build is not None else context.blocks
    assert result is not None
    return result


def mask_nonfinite(result: xr.Dataset, ds: xr.Dataset) -> xr.Dataset:
    """NaN for the (step, layer) entries whose weights or stored activations the audit
    flagged as non-finite."""
    if NONFINITE not in ds:
        return result
    keep = ~ds[NONFINITE].astype(bool)
    out = result.copy()
    for name, var in result.data_vars.items():
        if {"step", "layer"} <= set(var.dims):
            out[name] = var.where(keep).assign_attrs(var.attrs)
    return out


__all__ = ["GroupContext", "block_dataset", "counting_blocks", "group_dataset", "mask_nonfinite"]
