"""Lazy per-(step, layer) moments from a store Dataset, streamed over sample chunks.

Each layer is read, and its moments built, at its own width: ``activations[..., :width]``
touches only the feature chunks that hold the layer's values, never the padding chunks of
narrower layers (docs/store.md#layout).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from flq_audit._gram_forms import (
    DENSE,
    FACTOR,
    FACTOR_ROW,
    GRAM,
    GRAM_EIGENVALUES,
    GRAM_FACTOR,
    GRAM_ROWS,
    NONE,
    SPECTRUM,
    stored_forms,
)
from flq_audit.constants import GRAM_I, GRAM_J
from flq_audit.metrics._kernels.moments import (
    _moments_update,
    kernel_update,
    qr_merge,
    qr_update,
    use_dual,
)

MOMENT_I, MOMENT_J = "moment_i", "moment_j"
#: Feature columns turned into float64 at once while building a dual kernel.
KERNEL_COLUMNS = 1024


BLOCK_BYTES = 64 * 2**20


def coarse_steps(array: xr.DataArray) -> xr.DataArray:
    """Rechunk to whole layers and as many steps as fit in about ``BLOCK_BYTES``: the
    per-(step, layer) kernels are cheap, so fewer, larger tasks beat scheduler overhead."""
    per_step = array.dtype.itemsize * int(np.prod([n for d, n in array.sizes.items()
                                                    if d != "step"]))
    steps = max(1, BLOCK_BYTES // max(1, per_step))
    return array.chunk({"step": steps, **{d: -1 for d in array.dims if d != "step"}})


@dataclass(frozen=True)
class LayerGram:
    """One layer's stored Grams over steps, in the layer's form: ``values`` has the core
    dimensions ``core`` after ``step`` (``(gram_i, gram_j)`` dense, ``(factor_row, gram_j)``
    factor, ``(gram_i,)`` spectrum, none for a layer without a Gram, all NaN)."""

    form: str
    values: xr.DataArray
    core: tuple[str, ...]


def layer_grams(ds: xr.Dataset) -> list[LayerGram]:
    """Each layer's stored Grams sliced to its size (``gram_width``, and ``gram_rows`` for a
    factor), in blocks of steps: padding chunks are never read."""
    widths = np.asarray((ds["gram_width"] if "gram_width" in ds else ds["width"]).values)
    rows = (np.asarray(ds[GRAM_ROWS].values) if GRAM_ROWS in ds.coords or GRAM_ROWS in ds
            else widths)
    out = []
    for j, (form, width, n_rows) in enumerate(zip(stored_forms(ds), widths, rows, strict=True)):
        w, r = int(width), int(n_rows)
        if form == DENSE:
            values = ds[GRAM].isel(layer=j, gram_i=slice(0, w), gram_j=slice(0, w))
            core: tuple[str, ...] = (GRAM_I, GRAM_J)
        elif form == FACTOR:
            values = ds[GRAM_FACTOR].isel(layer=j, factor_row=slice(0, r), gram_j=slice(0, w))
            core = (FACTOR_ROW, GRAM_J)
        elif form == SPECTRUM:
            values = ds[GRAM_EIGENVALUES].isel(layer=j, gram_i=slice(0, w))
            core = (GRAM_I,)
        else:
            out.append(LayerGram(NONE, xr.full_like(ds["step"], np.nan, dtype=np.float64),
                                 ()))
            continue
        out.append(LayerGram(form, coarse_steps(values.drop_vars("layer")), core))
    return out


@dataclass(frozen=True)
class LayerMoments:
    """Lazy statistics of every layer, each at its own size: the augmented moments
    ``[H|Y|1]ᵀ[H|Y|1]`` (``(d+k+1)²``, primal) or, for layers wider than the probe when the
    dual form is allowed, the kernel ``HHᵀ`` (``n²``, dual). One DataArray
    ``(step, moment_i, moment_j)`` per layer; its ``dual`` attribute says which."""

    per_layer: tuple[xr.DataArray, ...]
    names: tuple[str, ...]
    attrs: dict[str, Any]

    def __iter__(self) -> Iterator[xr.DataArray]:
        return iter(self.per_layer)

    def sel(self, *, layer: str, drop: bool = True) -> xr.DataArray:
        """One layer's statistics by name, ``(step, moment_i, moment_j)``."""
        return self.per_layer[self.names.index(str(layer))]

    def is_dual(self, index: int) -> bool:
        return bool(self.per_layer[index].attrs["dual"])

    def is_qr(self, index: int) -> bool:
        """Whether the layer holds the QR factor of ``[H | Y_c]`` instead of its moments."""
        return bool(self.per_layer[index].attrs.get("qr", 0))


def layer_moments(ds: xr.Dataset, *, dual: bool = False, qr: bool = False,
                  primal: LayerMoments | None = None) -> LayerMoments:
    """Per-layer statistics as lazy dask arrays (see :class:`LayerMoments`).

    Primal: one task per stored chunk (one step, one block of samples) computes the block's
    moments at the layer's width; blocks are summed over samples by dask's tree reduction, so
    memory holds a few chunks and O(d²) per (step, layer), whatever the number of samples or
    steps. Dual (``dual=True`` and ``n < d + k + 1``): one task per step builds ``HHᵀ`` from
    column blocks of the layer, O(n²) memory. ``qr``: primal layers hold the triangular
    factor of ``[H | Y_c]`` instead (:class:`~flq_audit.metrics._kernels.moments.QRFactor`,
    one per sample block, merged by a tree of QR factorizations: O(d²) memory too).
    ``primal``: the primal moments already built for this store; layers that stay primal
    (and not ``qr``) reuse them (one graph, read once).
    """
    acts = ds["activations"].data
    if not isinstance(acts, da.Array):
        acts = da.from_array(acts, chunks=(1, 1, acts.shape[2], acts.shape[3]))
    targets = np.asarray(ds["targets"].values, dtype=np.float64)
    widths = [int(w) for w in np.asarray(ds["width"].values)]
    n, k = targets.shape
    names = tuple(str(name) for name in ds["layer"].values)
    per_layer = []
    for j, width in enumerate(widths):
        form = dual and use_dual(n, width, k)
        if primal is not None and not form and not qr and not primal.is_dual(j):
            per_layer.append(primal.per_layer[j])
            continue
        h = acts[:, j, :, :width]
        if form:
            total = _dual_kernel(h)
        elif qr:
            total = _primal_qr(h, targets)
        else:
            total = _primal_moments(h, targets)
        side = total.shape[1]
        steps_per_block = max(1, BLOCK_BYTES // (side * side * 8))
        total = total.rechunk({0: steps_per_block, 1: -1, 2: -1})
        per_layer.append(xr.DataArray(
            total, dims=("step", MOMENT_I, MOMENT_J), coords={"step": ds["step"]},
            attrs={"width": width, "n_targets": k, "dual": int(form),
                   "qr": int(qr and not form)}))
    return LayerMoments(tuple(per_layer), names, {"n_targets": k, "n_samples": n})


def _primal_moments(h: da.Array, targets: np.ndarray) -> da.Array:
    """``(step, d+k+1, d+k+1)`` moments of ``h`` (step, sample, feature)."""
    k = targets.shape[1]
    width = h.shape[2]
    side = width + k + 1

    def block(hb: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = np.empty((hb.shape[0], 1, side, side))
        for i in range(hb.shape[0]):
            out[i, 0] = _moments_update(hb[i], y)
        return out

    # targets enter as a dask input aligned with the sample chunks, so a distributed
    # scheduler ships each block its own rows instead of the whole target array
    y = da.from_array(targets, chunks=(h.chunks[1], (k,)))
    per_block = da.blockwise(
        block, "sbij", h.rechunk({2: width}), "sbf", y, "bt",
        new_axes={"i": side, "j": side}, adjust_chunks={"b": 1}, concatenate=True,
        dtype=np.float64,
    )
    return per_block.sum(axis=1)


def _primal_qr(h: da.Array, targets: np.ndarray) -> da.Array:
    """``(step, d+k, d+k)`` triangular factors of ``[h | Y_c]`` (``h``: step, sample,
    feature): one per sample block, then merged pairwise up a tree."""
    k = targets.shape[1]
    width = h.shape[2]
    side = width + k

    def block(hb: np.ndarray, y_c: np.ndarray) -> np.ndarray:
        out = np.empty((hb.shape[0], 1, side, side))
        for i in range(hb.shape[0]):
            out[i, 0] = qr_update(hb[i], y_c)
        return out

    def merge(x: np.ndarray, axis: object = None, keepdims: bool = True) -> np.ndarray:
        merged = np.stack([qr_merge(x[i]) for i in range(x.shape[0])])
        return merged[:, None] if keepdims else merged

    y_c = targets - targets.mean(axis=0)
    y = da.from_array(y_c, chunks=(h.chunks[1], (k,)))
    per_block = da.blockwise(
        block, "sbij", h.rechunk({2: width}), "sbf", y, "bt",
        new_axes={"i": side, "j": side}, adjust_chunks={"b": 1}, concatenate=True,
        dtype=np.float64,
    )
    return da.reduction(per_block, chunk=lambda x, axis, keepdims: x, combine=merge,
                        aggregate=merge, axis=1, keepdims=False, concatenate=True,
                        dtype=np.float64)


def _dual_kernel(h: da.Array) -> da.Array:
    """``(step, n, n)`` kernels ``HHᵀ`` of ``h`` (step, sample, feature)."""
    n = h.shape[1]

    def block(hb: np.ndarray) -> np.ndarray:
        out = np.zeros((hb.shape[0], n, n))
        for i in range(hb.shape[0]):
            for begin in range(0, hb.shape[2], KERNEL_COLUMNS):
                out[i] += kernel_update(hb[i, :, begin : begin + KERNEL_COLUMNS])
        return out

    return da.blockwise(
        block, "sij", h.rechunk({0: 1, 1: -1, 2: -1}), "sbf",
        new_axes={"i": n, "j": n}, concatenate=True, dtype=np.float64,
    )
