"""String coordinates read back with plain xarray as fixed-width strings: plotting, ``.sel``
and ``.to_pandas()`` work on the store exactly as on the NetCDF export."""

from __future__ import annotations

import warnings

import matplotlib
import numpy as np
import pytest
import xarray as xr
import zarr

from flq_audit import api
from flq_audit.store import _schema
from tests._helpers.runs import make_run

matplotlib.use("Agg")

LAYERS = ["layers.0", "layers.1", "layers.2"]
STEPS = [0, 10, 20]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """(store, export, warnings raised while writing) of a probe audit with metrics."""
    root = tmp_path_factory.mktemp("coords")
    run = make_run(root / "run", tuple(STEPS))
    store, nc = root / "S.zarr", root / "S.nc"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        api.audit(str(run), out=store)
        assert api.audit(str(run), out=store).skipped == STEPS  # a resume rewrites metadata
        api.compute_metrics(store)
        api.export(store, nc)
    return store, nc, caught


def _plots(values: xr.DataArray) -> None:
    import matplotlib.pyplot as plt

    artist = values.plot()
    assert artist is not None
    plt.close("all")


def _check_plain_xarray(ds: xr.Dataset) -> None:
    for name in ("layer", "layer_kind", "label", "commit"):
        assert ds[name].dtype.kind in "UO", (name, ds[name].dtype)
    tl = ds["target_linearity"]
    # xarray decodes CF character arrays (the export's strings) to object arrays, which its
    # 2-D plots refuse as coordinates: docs/store.md gives this one conversion
    _plots(tl.assign_coords(layer=tl["layer"].astype(str)))
    _plots(tl.sel(layer="layers.1"))
    table = tl.to_pandas()
    assert list(table.columns) == LAYERS and list(table.index) == STEPS
    np.testing.assert_array_equal(table["layers.1"].to_numpy(), tl.sel(layer="layers.1").values)


def test_plain_open_zarr_plots_selects_and_tabulates_like_the_export(written):
    store, nc, _ = written
    with xr.open_zarr(str(store)) as ds:
        _check_plain_xarray(ds)
        stored = ds["target_linearity"].load()
    with xr.open_dataset(nc) as exported:
        _check_plain_xarray(exported)
        np.testing.assert_allclose(exported["target_linearity"].values, stored.values)


def test_writing_the_store_raises_no_zarr_dtype_warning(written):
    _, _, caught = written
    assert [str(w.message)[:80] for w in caught if "FixedLengthUTF32" in str(w.message)] == []


def test_a_store_with_variable_length_string_coordinates_resumes_and_plots(
        tmp_path, monkeypatch):
    """Stores written by 0.1 hold object-dtype strings, read back as ``StringDType``."""
    run = make_run(tmp_path / "run", tuple(STEPS))
    store = tmp_path / "old.zarr"
    with monkeypatch.context() as patch:
        patch.setattr(_schema, "coordinate_strings", lambda values, **_: _schema._strings(values))
        api.audit(str(run), out=store)
    with xr.open_zarr(str(store)) as ds:
        assert ds["layer"].dtype.kind == "T"  # the 0.1 layout
    zarr.open_group(str(store), mode="r+")["done"][2] = False  # as if step 20 was cut short
    result = api.audit(str(run), out=store)
    assert result.skipped == [0, 10] and result.written == [20]
    api.compute_metrics(store)
    ds = api.open_store(store)
    assert ds["layer"].dtype.kind == "U" and ds["label"].dtype.kind == "U"
    assert [str(v) for v in ds["layer"].values] == LAYERS
    _plots(ds["target_linearity"])
    assert list(ds["target_linearity"].to_pandas().columns) == LAYERS
