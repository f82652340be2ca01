"""Weights whose activations overflow the stored dtype: the step is flagged, not stored silently.

``--activation-dtype float16`` holds values up to ±65504; weights near 1e30 give finite float32
activations that become infinite when stored. The audit finishes (exit 0), warns naming the
step and the layer, and sets ``nonfinite(step, layer)``.
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr
from safetensors.torch import load_file, save_file

from tests._helpers.cli import assert_says, describe, run_cli
from tests._helpers.runs import make_run


def test_float16_overflow_flags_the_step_and_names_the_layers(tmp_path):
    run = make_run(tmp_path / "run", steps=(0, 10))
    path = run / "step_10.safetensors"
    state = load_file(path)
    state["layers.0.weight"] = torch.full_like(state["layers.0.weight"], 1e30)
    save_file(state, str(path))
    out = tmp_path / "s.zarr"

    done = run_cli(run, "--out", out, "--activation-dtype", "float16")

    assert done.returncode == 0, describe(done)
    assert_says(done.stderr, "step 10 (step_10.safetensors): the activations of layer 'layers.1' "
                "hold NaN or infinity as stored (float16: values beyond ±65504 overflow)",
                "--activation-dtype float32")
    ds = xr.open_zarr(out)
    stored = ds.activations.sel(step=10).values
    flags = ds.nonfinite.load()
    for layer in ds.layer.values:  # flagged exactly where the stored rows are not finite
        width = int(ds.width.sel(layer=layer))
        rows = ds.activations.sel(step=10, layer=layer).values[:, :width]
        assert bool(flags.sel(step=10, layer=layer)) == (not np.isfinite(rows).all()), layer
    assert bool(flags.sel(step=10, layer="layers.1"))
    assert not bool(flags.sel(step=0).any())  # the ordinary step stays unflagged
    assert np.isinf(stored).any()
