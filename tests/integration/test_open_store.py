"""Opening a store with or without dask: the same data, and no dask graph in the second."""

from __future__ import annotations

import dask.array as da
import numpy as np

from flq_audit import api


def test_open_without_dask_reads_the_same_values(run_dir, tmp_path):
    store = tmp_path / "s.zarr"
    api.audit(str(run_dir), out=store)
    lazy, plain = api.open_store(store), api.open_store(store, dask=False)
    assert isinstance(lazy["gram"].data, da.Array)
    assert not any(isinstance(var.data, da.Array) for var in plain.variables.values())
    assert set(plain.variables) == set(lazy.variables)
    for name in lazy.variables:
        np.testing.assert_array_equal(plain[name].values, lazy[name].values, err_msg=name)
    assert plain.attrs == lazy.attrs
