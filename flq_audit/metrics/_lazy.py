"""Lazy per-(step, layer) moments from a store Dataset, streamed over sample chunks."""

from __future__ import annotations

import dask.array as da
import numpy as np
import xarray as xr

from flq_audit.metrics._kernels.moments import _moments_update

MOMENT_I, MOMENT_J = "moment_i", "moment_j"


BLOCK_BYTES = 64 * 2**20


def coarse_steps(array: xr.DataArray) -> xr.DataArray:
    """Rechunk to whole layers and as many steps as fit in about ``BLOCK_BYTES``: the
    per-(step, layer) kernels are cheap, so fewer, larger tasks beat scheduler overhead."""
    per_step = array.dtype.itemsize * int(np.prod([n for d, n in array.sizes.items()
                                                    if d != "step"]))
    steps = max(1, BLOCK_BYTES // max(1, per_step))
    return array.chunk({"step": steps, **{d: -1 for d in array.dims if d != "step"}})


def layer_moments(ds: xr.Dataset) -> xr.DataArray:
    """Augmented moments ``[H|Y|1]ᵀ[H|Y|1]`` per (step, layer), as a lazy dask array.

    One task per stored chunk (one step, one layer, one block of samples) computes the block's
    moments; blocks are summed over samples by dask's tree reduction, so memory holds a few
    chunks and O(d²) per (step, layer), whatever the number of samples or steps.
    """
    acts = ds["activations"].data
    if not isinstance(acts, da.Array):
        acts = da.from_array(acts, chunks=(1, 1, acts.shape[2], acts.shape[3]))
    targets = np.asarray(ds["targets"].values, dtype=np.float64)
    widths = np.asarray(ds["width"].values, dtype=np.int64)
    size = acts.shape[3]
    k = targets.shape[1]
    side = size + k + 1

    def block(h: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
        out = np.empty((h.shape[0], h.shape[1], 1, side, side))
        for i in range(h.shape[0]):
            for j in range(h.shape[1]):  # a chunk may hold several layers
                out[i, j, 0] = _moments_update(h[i, j, :, : int(w[j])], y, size=size)
        return out

    # targets and widths enter as dask inputs aligned with the sample and layer chunks, so a
    # distributed scheduler ships each block its own rows instead of the whole target array
    y = da.from_array(targets, chunks=(acts.chunks[2], (k,)))
    w = da.from_array(widths, chunks=(acts.chunks[1],))
    per_block = da.blockwise(
        block, "slbij", acts.rechunk({3: size}), "slbf", y, "bt", w, "l",
        new_axes={"i": side, "j": side}, adjust_chunks={"b": 1}, concatenate=True,
        dtype=np.float64,
    )
    total = per_block.sum(axis=2)
    # later kernels are cheap per (step, layer): group many into one task (≤ ~64 MiB blocks)
    steps_per_block = max(1, BLOCK_BYTES // max(1, acts.shape[1] * side * side * 8))
    total = total.rechunk({0: steps_per_block, 1: -1})
    return xr.DataArray(
        total, dims=("step", "layer", MOMENT_I, MOMENT_J),
        coords={"step": ds["step"], "layer": ds["layer"]},
        attrs={"n_features_max": size, "n_targets": k},
    )
