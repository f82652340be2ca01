"""Replay on a CUDA device gives the store a CPU replay gives (skipped without a device)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from tests._helpers.runs import make_run

pytestmark = pytest.mark.gpu


def test_cuda_replay_matches_cpu(tmp_path):
    from flq_audit import api

    run = make_run(tmp_path / "run", n_samples=300)
    stores = {device: tmp_path / f"{device}.zarr" for device in ("cpu", "cuda")}
    for device, store in stores.items():
        result = api.audit(str(run), out=store, device=device, batch_size=128)
        assert not result.failed and result.written == [0, 10, 20]
    with xr.open_zarr(str(stores["cpu"])) as cpu, xr.open_zarr(str(stores["cuda"])) as cuda:
        for name in ("activations", "gram"):
            np.testing.assert_allclose(cuda[name].values, cpu[name].values, rtol=1e-4, atol=1e-5,
                                       equal_nan=True, err_msg=name)
        np.testing.assert_array_equal(cuda["done"].values, cpu["done"].values)


def test_cuda_is_what_auto_picks():
    from flq_audit.capture import resolve_device

    assert resolve_device("auto") == "cuda"
