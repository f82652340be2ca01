"""Write a new store's template without computing (or importing dask for) its data arrays.

Coordinates, attributes and small arrays go through ``xarray.Dataset.to_zarr``. The big data
arrays (Grams, activations, extension variables) hold nothing but their fill value until a
step is written, so only their metadata is written, directly with zarr, in the same form
xarray gives it (dimension names, CF ``coordinates`` and ``_FillValue`` attributes).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import xarray as xr
import zarr

from flq_audit.constants import FEATURE, GRAM_I, GRAM_J, LAYER, SAMPLE, STEP
from flq_audit.store._schema import (
    ACTIVATIONS,
    DONE,
    GRAM,
    StoreLayout,
    encoding,
    fixed_width_strings_allowed,
    template,
)
from flq_audit.store._variables import extension_fill_arrays


@dataclass(frozen=True)
class FillOnlyArray:
    """A data array declared empty: every chunk reads as ``fill`` until written."""

    name: str
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: np.dtype
    fill: float | int
    attrs: dict[str, Any] = field(default_factory=dict)
    compressors: Any = "auto"


def fill_only_arrays(layout: StoreLayout) -> list[FillOnlyArray]:
    """The Grams, the activations (with a probe) and the extensions' non-flag variables."""
    n_steps, n_layers, width = len(layout.steps), len(layout.layers), layout.gram_max
    codecs = encoding(layout)
    arrays = [FillOnlyArray(
        GRAM, (STEP, LAYER, GRAM_I, GRAM_J), (n_steps, n_layers, width, width),
        codecs[GRAM]["chunks"], np.dtype(layout.gram_dtype), np.nan, {
            "long_name": "weight Gram W^T W in the layer's input space", "units": "1",
            "description": "NaN-padded beyond gram_width(layer); conv kernels as C_out x C_in*k*k",
        })]
    if layout.probe is not None:
        arrays.append(FillOnlyArray(
            ACTIVATIONS, (STEP, LAYER, SAMPLE, FEATURE),
            (n_steps, n_layers, layout.probe.n_samples, layout.feature_max),
            codecs[ACTIVATIONS]["chunks"], np.dtype(layout.activation_dtype), np.nan, {
                "long_name": "input features of each weight layer", "units": "1",
                "description": "NaN-padded beyond width(layer)",
            }, codecs[ACTIVATIONS]["compressors"]))
    for spec, shape, chunks in extension_fill_arrays(layout):
        arrays.append(FillOnlyArray(spec.name, tuple(spec.dims), shape, chunks,
                                    np.dtype(spec.dtype), spec.fill, dict(spec.attrs)))
    return arrays


def write_template(
    target: Any, layout: StoreLayout, *, version: str, mode: Literal["w-", "a"] = "w-",
    before_done: Callable[[], None] | None = None,
) -> None:
    """Create the store at ``target`` (a path or zarr store); ``done`` is written last.

    ``mode="a"`` adds the template to a store that holds only claims (an object store);
    ``before_done`` runs once everything but ``done`` is written. A store without ``done``
    is therefore a template that was cut short.
    """
    from xarray.backends.zarr import FillValueCoder

    ds = template(layout, version=version)
    codecs = step_chunked(ds, {name: enc for name, enc in encoding(layout).items()
                               if name in ds.variables})
    with fixed_width_strings_allowed(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Object at .flq is not recognized")
        ds.drop_vars(DONE).to_zarr(target, mode=mode, zarr_format=3, consolidated=False,
                                   encoding={k: v for k, v in codecs.items() if k != DONE})
        group = zarr.open_group(target, mode="r+", zarr_format=3)
        for array in fill_only_arrays(layout):
            attrs = dict(array.attrs)
            coordinates = _coordinates(ds, array.dims)
            if coordinates:
                attrs["coordinates"] = coordinates
            attrs["_FillValue"] = FillValueCoder.encode(array.fill, array.dtype)
            group.create_array(
                array.name, shape=array.shape, chunks=array.chunks, dtype=array.dtype,
                fill_value=array.fill, compressors=array.compressors,
                dimension_names=array.dims, attributes=attrs,
            )
        if before_done is not None:
            before_done()
        ds[[DONE]].to_zarr(target, mode="a", zarr_format=3, consolidated=False,
                           encoding={DONE: codecs.get(DONE, {})})


def step_chunked(ds: xr.Dataset, codecs: dict[str, dict]) -> dict[str, dict]:
    """``codecs`` with one step per chunk for every step-indexed data variable (``done``,
    ``error``, ``files`` ...): writers of different steps never rewrite a shared chunk."""
    out = {name: dict(spec) for name, spec in codecs.items()}
    for name, var in ds.data_vars.items():
        if var.dims and var.dims[0] == STEP:
            spec = out.setdefault(str(name), {})
            shape = tuple(spec.get("chunks") or var.shape)
            spec["chunks"] = (1, *shape[1:])
    return out


def _coordinates(ds: xr.Dataset, dims: tuple[str, ...]) -> str:
    """The CF ``coordinates`` attribute xarray writes: non-index coordinates on ``dims``."""
    return " ".join(sorted(str(name) for name, coord in ds.coords.items()
                           if name not in ds.dims and set(coord.dims) <= set(dims)))


__all__ = ["FillOnlyArray", "fill_only_arrays", "write_template"]
