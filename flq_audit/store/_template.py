"""Write a new store's template without computing (or importing dask for) its data arrays.

Everything is written directly with zarr, in the form ``xarray.Dataset.to_zarr`` gives it
(dimension names, CF ``coordinates`` and ``_FillValue`` attributes, zarr's own chunks where
none are set): building xarray objects would import dask, a fixed cost of every audit. The
big data arrays (Grams, activations, extension variables) hold nothing but their fill
value until a step is written, so only their metadata is written.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import zarr

from flq_audit.constants import FEATURE, LAYER, SAMPLE, STEP
from flq_audit.store._grams import gram_arrays
from flq_audit.store._schema import (
    ACTIVATIONS,
    DONE,
    StoreLayout,
    Template,
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
    n_steps, n_layers = len(layout.steps), len(layout.layers)
    codecs = encoding(layout)
    arrays = [FillOnlyArray(name, dims, shape, chunks, np.dtype(layout.gram_dtype), np.nan, attrs)
              for name, dims, shape, chunks, attrs in gram_arrays(layout)]
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
    tpl = template(layout, version=version)
    codecs = step_chunked(tpl, encoding(layout))
    with fixed_width_strings_allowed():
        group = zarr.open_group(target, mode=mode, zarr_format=3)
        group.attrs.update(tpl.attrs)
        for name, (dims, values, attrs) in tpl.coords.items():
            _write_small(group, name, dims, values, attrs, codecs.get(name, {}))
        for name, (dims, values, attrs) in tpl.data_vars.items():
            if name != DONE:
                _write_small(group, name, dims, values, _with_coordinates(tpl, dims, attrs),
                             codecs.get(name, {}))
        for array in fill_only_arrays(layout):
            attrs = _with_coordinates(tpl, array.dims, array.attrs)
            attrs["_FillValue"] = _encoded_fill(array.fill, array.dtype)
            group.create_array(
                array.name, shape=array.shape, chunks=array.chunks, dtype=array.dtype,
                fill_value=array.fill, compressors=array.compressors,
                dimension_names=array.dims, attributes=attrs,
            )
        if before_done is not None:
            before_done()
        dims, values, attrs = tpl.data_vars[DONE]
        _write_small(group, DONE, dims, values, _with_coordinates(tpl, dims, attrs),
                     codecs.get(DONE, {}))


def _write_small(group: zarr.Group, name: str, dims: tuple[str, ...], values: np.ndarray,
                 attrs: dict[str, Any], codec: dict[str, Any]) -> None:
    """One coordinate or small variable, declared and written as ``xarray.to_zarr`` does:
    floats get a NaN ``_FillValue`` unless the encoding names one, strings of object dtype
    become variable-length strings, unencoded chunks are zarr's own choice."""
    attrs = dict(attrs)
    fill = codec.get("_FillValue", np.nan if values.dtype.kind == "f" else None)
    if fill is not None:
        attrs["_FillValue"] = _encoded_fill(fill, values.dtype)
    array = group.create_array(
        name, shape=values.shape, chunks=codec.get("chunks", "auto"),
        dtype=str if values.dtype.kind == "O" else values.dtype, fill_value=fill,
        dimension_names=dims, attributes=attrs)
    array[...] = values


def _with_coordinates(tpl: Template, dims: tuple[str, ...], attrs: dict[str, Any]
                      ) -> dict[str, Any]:
    coordinates = tpl.coordinates_on(dims)
    return {**attrs, "coordinates": coordinates} if coordinates else dict(attrs)


def _encoded_fill(fill: float | int | bool, dtype: np.dtype) -> Any:
    """The ``_FillValue`` attribute ``xarray.Dataset.to_zarr`` writes and ``open_zarr`` decodes:
    a float as the base64 of its little-endian float64 bytes, an integer or a boolean as
    itself (written here so that an audit does not import xarray)."""
    kind = np.dtype(dtype).kind
    if kind == "f":
        return base64.standard_b64encode(struct.pack("<d", float(fill))).decode()
    if kind == "b":
        return bool(fill)
    if kind in "iu":
        return int(fill)
    raise ValueError(f"no _FillValue encoding for dtype {np.dtype(dtype)}")


def step_chunked(tpl: Template, codecs: dict[str, dict]) -> dict[str, dict]:
    """``codecs`` of the template's variables, with one step per chunk for every
    step-indexed data variable (``done``, ``error``, ``files`` ...): writers of different
    steps never rewrite a shared chunk."""
    names = set(tpl.coords) | set(tpl.data_vars)
    out = {name: dict(spec) for name, spec in codecs.items() if name in names}
    for name, (dims, values, _) in tpl.data_vars.items():
        if dims and dims[0] == STEP:
            spec = out.setdefault(name, {})
            shape = tuple(spec.get("chunks") or values.shape)
            spec["chunks"] = (1, *shape[1:])
    return out


__all__ = ["FillOnlyArray", "fill_only_arrays", "write_template"]
