"""``ds.flq``: unpadded activations and Grams, metrics selected by their stored parameters
(stores written by 0.1 included), done steps, a summary; non-finite entries left out."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

import flq_audit  # noqa: F401  (registers ds.flq)
from flq_audit import api
from flq_audit.errors import MetricError
from flq_audit.store import open_dataset
from tests._helpers.cli import assert_says, describe, invoke

WIDTHS = (5, 3, 8)
STEPS = np.array([0, 10, 20], dtype=np.int64)
DONE = np.array([True, False, True])


def _tl_lstsq(h: np.ndarray, y: np.ndarray) -> float:
    """TL from its definition: R² of a no-intercept least-squares fit of centred targets."""
    yc = y - y.mean(axis=0)
    fit = np.linalg.lstsq(h, yc, rcond=None)[0]
    return 1.0 - float(((yc - h @ fit) ** 2).sum()) / float((yc ** 2).sum())


def _hand_built(rng: np.random.Generator, n: int = 30, c: int = 3) -> tuple[xr.Dataset, np.ndarray]:
    """A store-shaped Dataset: NaN-padded activations and Grams, one step not done."""
    f = max(WIDTHS)
    y = np.eye(c)[np.arange(n) % c]
    acts = np.full((len(STEPS), len(WIDTHS), n, f), np.nan)
    gram = np.full((len(STEPS), len(WIDTHS), f, f), np.nan)
    for s in np.flatnonzero(DONE):
        for j, w in enumerate(WIDTHS):
            acts[s, j, :, :w] = y @ rng.normal(size=(c, w)) + rng.normal(size=(n, w))
            weight = rng.normal(size=(4, w))
            gram[s, j, :w, :w] = weight.T @ weight
    ds = xr.Dataset(
        {"activations": (("step", "layer", "sample", "feature"), acts),
         "gram": (("step", "layer", "gram_i", "gram_j"), gram),
         "targets": (("sample", "target"), y, {"kind": "classes"}),
         "done": (("step",), DONE)},
        coords={"step": STEPS, "layer": np.asarray(["a", "b", "c"], dtype=object),
                "width": ("layer", np.asarray(WIDTHS)), "gram_width": ("layer", np.asarray(WIDTHS))},
        attrs={"Conventions": "CF-1.8 flq-audit-1"},  # what marks a folder as a store
    )
    return ds, acts


def test_activations_and_gram_are_unpadded(tmp_path):
    ds, acts = _hand_built(np.random.default_rng(0))
    ds.to_zarr(tmp_path / "s.zarr", zarr_format=3)
    for opened in (open_dataset(tmp_path / "s.zarr"), xr.open_zarr(tmp_path / "s.zarr")):
        h = opened.flq.activations(20, "b")
        assert h.dims == ("sample", "feature") and h.shape == (30, 3)
        np.testing.assert_array_equal(h.values, acts[2, 1, :, :3])
        assert opened.flq.gram(0, "c").shape == (8, 8)
        assert np.isfinite(opened.flq.gram(0, "c").values).all()
        assert opened.flq.done_steps == [0, 20]


def test_a_store_written_by_0_1_is_selected_by_parameters(tmp_path):
    ds, _ = _hand_built(np.random.default_rng(1))
    stamp = json.dumps({"done_steps": [0, 20]})
    default = {"pca": -1, "pca_threshold": 1000, "ridge": 0.0, "denominator": "column"}
    projected = {**default, "pca": 256}
    values = np.random.default_rng(2).random((3, 3))
    ds["target_linearity"] = (("step", "layer"), values,
                              {"flq_metric": "tl", "flq_stamp": stamp, **default})
    ds["target_linearity__pca256"] = (("step", "layer"), values / 2,
                                      {"flq_metric": "tl__pca256", "flq_stamp": stamp, **projected})
    ds["target_linearity__pca256_rank"] = (("step", "layer"), values + 7,
                                           {"flq_metric": "tl__pca256", "flq_stamp": stamp,
                                            **projected})
    ds["t90__pca256"] = (("layer",), np.array([10.0, 20.0, 20.0]),
                         {"flq_metric": "dynamics__pca256", "flq_stamp": stamp, **projected})
    ds.to_zarr(tmp_path / "old.zarr", zarr_format=3)
    old = xr.open_zarr(tmp_path / "old.zarr")
    np.testing.assert_array_equal(old.flq.metric("target_linearity").values, values)
    np.testing.assert_array_equal(old.flq.metric("target_linearity", pca=256).values, values / 2)
    np.testing.assert_array_equal(old.flq.metric("target_linearity_rank", pca=256).values,
                                  values + 7)
    np.testing.assert_array_equal(old.flq.metric("t90", pca=256).values, [10.0, 20.0, 20.0])
    with pytest.raises(MetricError, match="ridge"):
        old.flq.metric("target_linearity", ridge=0.5)
    # a new run on the old store adds a parameter set and keeps reading the old one
    api.compute_metrics(tmp_path / "old.zarr", metrics=["tl"], ridge=0.5)
    new = open_dataset(tmp_path / "old.zarr")
    np.testing.assert_array_equal(new.flq.metric("target_linearity", pca=256).values, values / 2)
    ridge = new.flq.metric("target_linearity", ridge=0.5)
    assert ridge.attrs["ridge"] == 0.5 and "flq_param_id" in ridge.attrs
    assert np.isnan(ridge.sel(step=10)).all()
    # the 0.1 parameter set is current (same done steps and parameters): read back as stored
    again = api.compute_metrics(tmp_path / "old.zarr", metrics=["tl"], pca=256)
    np.testing.assert_array_equal(again["target_linearity__pca256"].values, values / 2)
    np.testing.assert_array_equal(again["target_linearity__pca256_rank"].values, values + 7)


def test_metric_selected_by_parameters_matches_the_definition(tmp_path):
    ds, acts = _hand_built(np.random.default_rng(3))
    ds.to_zarr(tmp_path / "s.zarr", zarr_format=3)
    api.compute_metrics(tmp_path / "s.zarr", metrics=["tl"])
    api.compute_metrics(tmp_path / "s.zarr", metrics=["tl"], pca=2, pca_threshold=4)
    opened = open_dataset(tmp_path / "s.zarr")
    tl = opened.flq.metric("target_linearity")
    y = ds["targets"].values
    for s in np.flatnonzero(DONE):
        for j, w in enumerate(WIDTHS):
            assert float(tl[s, j]) == pytest.approx(_tl_lstsq(acts[s, j, :, :w], y), abs=1e-10)
    assert tl.sel(step=10).isnull().all()
    features = opened.flq.metric("target_linearity_n_features", pca=2, pca_threshold=4)
    np.testing.assert_array_equal(features.sel(step=0).values, [2.0, 3.0, 2.0])
    from flq_audit.metrics import TLOptions

    same = opened.flq.metric("target_linearity", tl=TLOptions(pca=2, pca_threshold=4))
    assert same.attrs["pca"] == 2


def test_summary_is_a_plain_record(tmp_path):
    ds, _ = _hand_built(np.random.default_rng(4))
    ds.to_zarr(tmp_path / "s.zarr", zarr_format=3)
    api.compute_metrics(tmp_path / "s.zarr", metrics=["surrogate"])
    summary = open_dataset(tmp_path / "s.zarr").flq.summary()
    assert [s.step for s in summary.steps] == [0, 10, 20]
    assert summary.n_done == 2
    assert [(la.name, la.width) for la in summary.layers] == [("a", 5), ("b", 3), ("c", 8)]
    assert summary.n_samples == 30
    assert summary.bytes_on_disk and summary.bytes_on_disk > 0
    assert {"surrogate", "alignment"} <= set(summary.metrics)


def test_nonfinite_entries_are_nan_and_the_report_says_which(run_dir, tmp_path):
    store = tmp_path / "s.zarr"
    api.audit(str(run_dir), out=store)
    ds = open_dataset(store)
    flags = np.zeros((ds.sizes["step"], ds.sizes["layer"]), dtype=bool)
    flags[1, 2] = True  # step 10, third layer: as the audit flags NaN/Inf weights
    layer = str(ds["layer"].values[2])
    xr.Dataset({"nonfinite": (("step", "layer"), flags)}, attrs=ds.attrs).to_zarr(
        store, mode="a", zarr_format=3, consolidated=False)
    metrics = api.compute_metrics(store, metrics=["tl", "surrogate", "gram"])
    for name in ("target_linearity", "surrogate", "gram_effective_rank"):
        values = metrics[name].transpose("step", "layer").values
        assert np.isnan(values[1, 2]), name
        assert np.isfinite(np.delete(values.ravel(), 1 * values.shape[1] + 2)).all(), name
    h = ds["activations"].values[1, 2][:, : int(ds["width"].values[2])].astype(np.float64)
    assert np.isfinite(_tl_lstsq(h, ds["targets"].values))  # NaN because flagged, not by data
    report = invoke("report", store, "--out", tmp_path / "figures")
    assert report.exit_code == 0, describe(report)
    assert_says(report.stdout, "left out 1", f"step 10, layer {layer}", "non-finite weights")
