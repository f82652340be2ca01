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

    def block(h: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        location = block_info[0]["array-location"]
        first_layer = location[1][0]
        start, stop = location[2]
        out = np.empty((h.shape[0], h.shape[1], 1, side, side))
        for i in range(h.shape[0]):
            for j in range(h.shape[1]):
                width = int(widths[first_layer + j])  # a chunk may hold several layers
                out[i, j, 0] = _moments_update(
                    h[i, j, :, :width], targets[start:stop], size=size
                )
        return out

    n_blocks = len(acts.chunks[2])
    per_block = da.map_blocks(
        block, acts.rechunk({3: size}), dtype=np.float64, new_axis=[4],
        chunks=(acts.chunks[0], acts.chunks[1], (1,) * n_blocks, (side,), (side,)),
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
