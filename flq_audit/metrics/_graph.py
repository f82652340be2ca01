"""The one lazy builder: a spec's per-(step, layer) kernel as a single ``xr.apply_ufunc``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from flq_audit.metrics._kernels.moments import Moments
from flq_audit.metrics._lazy import MOMENT_I, MOMENT_J, coarse_steps, layer_moments
from flq_audit.metrics._spec import Block, MetricSpec

NONFINITE = "nonfinite"


@dataclass
class GroupContext:
    """What a spec's ``build`` sees: the store, shared moments, options, finished groups."""

    ds: xr.Dataset
    options: Any
    blocks: xr.Dataset | None = None
    groups: dict[str, xr.Dataset] = field(default_factory=dict)
    shared_moments: xr.DataArray | None = None

    @property
    def moments(self) -> xr.DataArray:
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
    input is not finite, with each output's attributes."""
    assert spec.kernel is not None
    ds, options, kernel = context.ds, context.options, spec.kernel
    with_moments, with_gram = "moments" in spec.needs, "gram" in spec.needs
    k = int(context.moments.attrs["n_targets"]) if with_moments else 0
    inputs: list[xr.DataArray] = []
    core: list[list[str]] = []
    if with_moments:
        inputs.append(context.moments)
        core.append([MOMENT_I, MOMENT_J])
    if with_gram:
        inputs.append(coarse_steps(ds["gram"]))
        core.append(["gram_i", "gram_j"])
    inputs.append(ds["width"])
    core.append([])
    gram_width = ds["gram_width"] if "gram_width" in ds else ds["width"]
    inputs.append(gram_width)
    core.append([])
    nan = _nan_like(spec)
    single = len(spec.outputs) == 1
    if single:
        nan = nan[0]

    def per_block(*arrays: np.ndarray) -> tuple[Any, ...]:
        width, g_width = int(arrays[-2]), int(arrays[-1])
        position = 0
        moments = gram = None
        if with_moments:
            moments = Moments.from_matrix(arrays[0], width, k)
            position = 1
            if not np.isfinite(moments.hh).all():
                return nan
        if with_gram:
            gram = np.asarray(arrays[position][:g_width, :g_width], dtype=np.float64)
            if not np.isfinite(gram).all():
                return nan
        values = tuple(kernel(Block(moments, gram, width, g_width), options))
        return values[0] if single else values

    out_dims = [list(o.dims) for o in spec.outputs.values()]
    sizes = {d: n for o in spec.outputs.values() for d, n in o.sizes.items()}
    results = xr.apply_ufunc(
        per_block, *inputs, input_core_dims=core, output_core_dims=out_dims,
        vectorize=True, dask="parallelized", keep_attrs=False,
        output_dtypes=[np.float64] * len(spec.outputs),
        dask_gufunc_kwargs={"output_sizes": sizes} if sizes else None,
    )
    if len(spec.outputs) == 1:
        results = (results,)
    done = context.done
    return xr.Dataset({
        name: value.where(done).assign_attrs(output.attrs())
        for (name, output), value in zip(spec.outputs.items(), results, strict=True)
    })


def group_dataset(spec: MetricSpec, context: GroupContext) -> xr.Dataset:
    """A group's lazy Dataset: its block outputs, then whatever its ``build`` adds."""
    context.blocks = block_dataset(spec, context) if spec.kernel is not None else None
    result = spec.build(context) if spec.build is not None else context.blocks
    assert result is not None
    return result


def mask_nonfinite(result: xr.Dataset, ds: xr.Dataset) -> xr.Dataset:
    """NaN for the (step, layer) entries whose weights the audit flagged as non-finite."""
    if NONFINITE not in ds:
        return result
    keep = ~ds[NONFINITE].astype(bool)
    out = result.copy()
    for name, var in result.data_vars.items():
        if {"step", "layer"} <= set(var.dims):
            out[name] = var.where(keep).assign_attrs(var.attrs)
    return out


__all__ = ["GroupContext", "block_dataset", "group_dataset", "mask_nonfinite"]
