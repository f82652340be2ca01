"""Template arrays and chunk encoding of the variables that step extensions declare."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from flq_audit.constants import FEATURE, GRAM_I, GRAM_J, LAYER, SAMPLE, STEP, TARGET
from flq_audit.store._records import VariableSpec

if TYPE_CHECKING:
    from flq_audit.store._schema import StoreLayout


def dim_sizes(layout: StoreLayout) -> dict[str, int]:
    """The size of every store dimension an extension variable may use."""
    sizes = {STEP: len(layout.steps), LAYER: len(layout.layers), GRAM_I: layout.gram_max,
             GRAM_J: layout.gram_max, FEATURE: layout.feature_max}
    if layout.probe is not None:
        sizes[SAMPLE] = layout.probe.n_samples
        sizes[TARGET] = int(layout.probe.targets.shape[1])
    return sizes


def _shape_and_chunks(layout: StoreLayout, spec: VariableSpec) -> tuple[tuple, tuple]:
    sizes = dim_sizes(layout)
    unknown = [d for d in spec.dims if d not in sizes]
    if unknown:
        raise ValueError(f"variable {spec.name!r}: unknown dimension(s) {unknown} for this "
                         f"store (known: {sorted(sizes)})")
    shape = tuple(sizes[d] for d in spec.dims)
    # one chunk per step; per layer too when each layer holds a matrix or more
    chunks = tuple(1 if d == STEP or (d == LAYER and len(spec.dims) > 2) else sizes[d]
                   for d in spec.dims)
    return shape, chunks


def extension_variables(layout: StoreLayout) -> dict[str, Any]:
    """``{name: (dims, lazy fill array, attrs)}`` for the template Dataset."""
    import dask.array as da  # only to build a template: keeps the read path light

    out: dict[str, Any] = {}
    for spec in layout.variables:
        shape, chunks = _shape_and_chunks(layout, spec)
        if np.dtype(spec.dtype) == np.bool_:  # small flags: written with the template
            data: Any = np.full(shape, spec.fill, dtype=bool)
        else:
            data = da.full(shape, spec.fill, dtype=spec.dtype, chunks=chunks)
        out[spec.name] = (spec.dims, data, dict(spec.attrs))
    return out


def extension_encoding(layout: StoreLayout) -> dict[str, dict[str, Any]]:
    """Chunks aligned with one step's write, and the fill value of unwritten steps."""
    out: dict[str, dict[str, Any]] = {}
    for spec in layout.variables:
        _, chunks = _shape_and_chunks(layout, spec)
        out[spec.name] = {"chunks": chunks}
        if np.dtype(spec.dtype) != np.bool_:
            out[spec.name]["_FillValue"] = spec.fill
    return out
