"""open_runs: stores that differ in steps, layers and widths on one ``run`` dimension, each
run's values equal to its own store's, probes checked, tags as coordinates."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import flq_audit
from flq_audit import api
from flq_audit.errors import OptionError, StoreMismatchError
from tests._helpers.runs import SMALL_SPEC, make_run

DEEP_WIDE = {**SMALL_SPEC, "widths": [16, 16, 16]}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """a: 3 layers of width ≤ 8, steps 0 10 20; b: the same net, steps 0 10 30;
    c: 4 layers of width ≤ 16, steps 0 20. One probe (a's) for all; d: another probe."""
    root = tmp_path_factory.mktemp("runs")
    a = make_run(root / "a", (0, 10, 20))
    b = make_run(root / "b", (0, 10, 30), seed=1)
    c = make_run(root / "c", (0, 20), spec=DEEP_WIDE, seed=2)
    d = make_run(root / "d", (0, 10), seed=3)  # keeps its own probe
    for run in (b, c):
        shutil.copy(a / "probe.npz", run / "probe.npz")
    tags = {"a": {"weight_decay": 0.0, "seed": 0}, "b": {"weight_decay": 0.5, "seed": 1},
            "c": {"weight_decay": 0.5, "opt": "adamw"}, "d": {}}
    out = {}
    for name, run in zip("abcd", (a, b, c, d), strict=True):
        out[name] = root / f"{name}.zarr"
        api.audit(str(run), out=out[name], tags=tags[name])
        api.compute_metrics(out[name], metrics=["tl"])
    return out


def test_values_are_each_stores_own_on_the_union_of_steps_and_layers(stores):
    ds = flq_audit.open_runs([stores["a"], stores["b"], stores["c"]])
    assert list(ds.run.values) == ["a", "b", "c"]
    assert list(ds.step.values) == [0, 10, 20, 30]
    assert list(ds.layer.values) == ["layers.0", "layers.1", "layers.2", "layers.3"]
    assert ds.sizes["feature"] == 16
    for name in "abc":
        own = api.open_store(stores[name], dask=False)
        one = ds.sel(run=name)
        for var in ("target_linearity", "activations", "gram"):
            expected = own[var].values
            got = one[var].sel(step=own.step.values, layer=own.layer.values).values
            index = tuple(slice(0, n) for n in expected.shape)
            np.testing.assert_array_equal(got[index], expected)
            assert np.isnan(got[..., expected.shape[-1]:]).all()  # padded to the widest run
        np.testing.assert_array_equal(one.width.sel(layer=own.layer.values).values,
                                      own.width.values)
        absent = sorted(set(ds.step.values) - set(own.step.values))
        assert not one.done.sel(step=absent).values.any()
        assert np.isnan(one.target_linearity.sel(step=absent).values).all()
    # a and b have no layers.3: NaN there, depth −1, no source layer
    assert np.isnan(ds.target_linearity.sel(run=["a", "b"], layer="layers.3").values).all()
    assert list(ds.depth.sel(layer="layers.3").values) == [-1, -1, 3]
    assert list(ds.source_layer.sel(layer="layers.3").values) == ["", "", "layers.3"]
    assert ds.attrs["layer_alignment"] == "name"
    assert "feature" in ds.attrs["dimensions_padded"]


def test_tags_and_run_attributes_are_coordinates_along_run(stores):
    ds = flq_audit.open_runs([stores["a"], stores["b"], stores["c"]])
    assert list(ds.sel(run=ds.weight_decay == 0.5).run.values) == ["b", "c"]
    assert ds.weight_decay.dtype == np.float64 and ds.weight_decay.dims == ("run",)
    np.testing.assert_array_equal(ds.seed.values, [0.0, 1.0, np.nan])  # c has no seed
    assert list(ds.opt.values) == ["", "", "adamw"]
    assert list(ds.store.values) == [str(stores[n]) for n in "abc"]
    assert ds.source.dims == ("run",) and ds.probe_fingerprint.dims == ("run",)
    assert ds.commit.dims == ("run", "step")  # the store's per-step coordinate gains run


def test_depth_alignment_maps_each_layer_to_the_nearest_relative_depth(stores):
    ds = flq_audit.open_runs([stores["a"], stores["c"]], align="depth")
    assert list(ds.layer.values) == ["d0.00", "d0.50", "d1.00"]
    # a: 3 layers at 0, .5, 1; c: 4 layers at 0, 1/3, 2/3, 1 → .5 is as near 1/3 as 2/3:
    # the shallower wins
    assert ds.source_layer.sel(run="a").values.tolist() == ["layers.0", "layers.1", "layers.2"]
    assert ds.source_layer.sel(run="c").values.tolist() == ["layers.0", "layers.1", "layers.3"]
    own = api.open_store(stores["c"], dask=False).target_linearity
    np.testing.assert_array_equal(
        ds.target_linearity.sel(run="c", layer="d1.00", step=own.step.values).values,
        own.sel(layer="layers.3").values)
    assert '"d0.50": "layers.1"' in ds.attrs["layer_mapping"]


def test_runs_on_different_probes_are_refused_unless_asked(stores):
    with pytest.raises(StoreMismatchError, match="different probes") as caught:
        flq_audit.open_runs([stores["a"], stores["d"]])
    assert "a (probe" in str(caught.value) and "d (probe" in str(caught.value)
    assert "across_probes" in (caught.value.hint or "")
    ds = flq_audit.open_runs([stores["a"], stores["d"]], across_probes=True)
    assert ds.attrs["across_probes"] == 1 and ds.sizes["run"] == 2


def test_names(stores, tmp_path):
    ds = flq_audit.open_runs([stores["a"], stores["b"]], names=["base", "wd"])
    assert list(ds.run.values) == ["base", "wd"]
    with pytest.raises(OptionError, match="one name per store"):
        flq_audit.open_runs([stores["a"], stores["b"]], names=["x"])
    with pytest.raises(OptionError, match="must differ"):
        flq_audit.open_runs([stores["a"], stores["b"]], names=["x", "x"])
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    shutil.copytree(stores["a"], tmp_path / "one" / "run.zarr")
    shutil.copytree(stores["b"], tmp_path / "two" / "run.zarr")
    same = flq_audit.open_runs([tmp_path / "one" / "run.zarr", tmp_path / "two" / "run.zarr"])
    assert list(same.run.values) == ["one/run", "two/run"]
    with pytest.raises(OptionError, match="at least one store"):
        flq_audit.open_runs([])


def test_url_stores_combine_with_local_ones(stores):
    url = "memory://open-runs/b.zarr"
    api.audit(str(stores["b"].parent / "b"), out=url, tags={"weight_decay": 0.5})
    api.compute_metrics(url, metrics=["tl"])
    ds = flq_audit.open_runs([stores["a"], url])
    assert list(ds.run.values) == ["a", "b"]
    own = api.open_store(stores["b"], dask=False).target_linearity
    np.testing.assert_array_equal(ds.target_linearity.sel(run="b", step=own.step.values).values,
                                  own.values)
    assert ds.weight_decay.sel(run="b") == 0.5


@pytest.mark.distributed
def test_a_distributed_client_computes_the_combined_dataset(stores):
    distributed = pytest.importorskip("distributed")
    ds = flq_audit.open_runs([stores["a"], stores["c"]])
    expected = ds.activations.mean(("sample", "feature")).compute(scheduler="threads")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        got = client.compute(ds.activations.mean(("sample", "feature")).data).result()
    np.testing.assert_array_equal(got, expected.values)
    own = api.open_store(stores["c"], dask=False).activations
    np.testing.assert_allclose(got[1, [0, 2]], own.mean(("sample", "feature")).values,
                               rtol=1e-6)
