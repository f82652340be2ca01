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
    """``{name: (dims, array, attrs)}`` of the boolean flags, written with the template."""
    out: dict[str, Any] = {}
    for spec in layout.variables:
        shape, _ = _shape_and_chunks(layout, spec)
        if np.dtype(spec.dtype) == np.bool_:
            out[spec.name] = (spec.dims, np.full(shape, spec.fill, dtype=bool), dict(spec.attrs))
    return out


def extension_fill_arrays(layout: StoreLayout) -> list[tuple[VariableSpec, tuple, tuple]]:
    """``(spec, shape, chunks)`` of the other variables: declared empty, filled step by step."""
    return [(spec, *_shape_and_chunks(layout, spec)) for spec in layout.variables
            if np.dtype(spec.dtype) != np.bool_]


def extension_encoding(layout: StoreLayout) -> dict[str, dict[str, Any]]:
    """Chunks aligned with one step's write, and the fill value of unwritten steps."""
    out: dict[str, dict[str, Any]] = {}
    for spec in layout.variables:
        _, chunks = _shape_and_chunks(layout, spec)
        out[spec.name] = {"chunks": chunks}
        if np.dtype(spec.dtype) != np.bool_:
            out[spec.name]["_FillValue"] = spec.fill
    return out
