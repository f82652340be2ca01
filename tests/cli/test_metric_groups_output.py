"""What ``flq-audit metrics`` prints and computes on small real stores: every group on a
one-step store, and the tables of every value (records only in machine-readable output)."""

from __future__ import annotations

import numpy as np
import pytest

from flq_audit import api
from tests._helpers.cli import assert_says, describe, invoke
from tests._helpers.runs import make_run

GROUPS = ("tl", "surrogate", "gram", "dynamics", "nc")


@pytest.fixture(scope="module")
def one_step_store(tmp_path_factory):
    """A three-checkpoint run audited at its last step only (``--steps last``)."""
    root = tmp_path_factory.mktemp("one-step")
    run = make_run(root / "run")
    store = root / "one.zarr"
    result = api.audit(str(run), out=store, steps="last")
    assert not result.failed, result.failed
    return store


@pytest.fixture(scope="module")
def three_step_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("three-steps")
    run = make_run(root / "run")
    store = root / "three.zarr"
    assert not api.audit(str(run), out=store).failed
    return store


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_works_on_a_one_step_store(one_step_store, group):
    result = invoke("metrics", one_step_store, "--metric", group, "--recompute")
    assert result.exit_code == 0, describe(result)
    assert "internal error" not in result.stdout + result.stderr


def test_gram_on_one_step_has_spectra_and_says_why_drift_is_missing(one_step_store):
    result = invoke("metrics", one_step_store, "--metric", "gram", "--recompute")
    assert result.exit_code == 0, describe(result)
    assert_says(result.stdout, "gram_drift: not defined on store", "with one done step (step 20)")
    ds = api.compute_metrics(one_step_store, metrics=["gram"])
    assert np.isnan(ds["gram_drift"].values).all()  # no previous step to compare with
    # the store lays out every listed step; only the audited one has values
    assert ds.sizes["step"] == 3
    assert np.isfinite(ds["gram_effective_rank"].sel(step=20).values).all()
    assert np.isnan(ds["gram_effective_rank"].sel(step=[0, 10]).values).all()
    assert np.isfinite(ds["gram_cosine_to_final"].sel(step=20).values).all()


def test_crossing_times_on_one_step_are_undefined_and_said_so(one_step_store):
    result = invoke("metrics", one_step_store, "--metric", "dynamics", "--recompute")
    assert result.exit_code == 0, describe(result)
    assert_says(result.stdout, "t50, t90: not defined on store")
    ds = api.compute_metrics(one_step_store, metrics=["dynamics"])
    assert np.isnan(ds["t90"].values).all()


def test_gram_drift_with_several_steps_is_relative_change_to_the_previous_step(
        three_step_store):
    import xarray as xr

    ds = api.compute_metrics(three_step_store, metrics=["gram"], recompute=True)
    store = xr.open_zarr(three_step_store)
    gram = np.asarray(store["gram"].isel(layer=0).values, dtype=float)
    width = int(store["gram_width"].values[0])
    gram = gram[:, :width, :width]
    expected = [np.linalg.norm(gram[i] - gram[i - 1]) / np.linalg.norm(gram[i - 1])
                for i in (1, 2)]
    drift = ds["gram_drift"].isel(layer=0).values
    assert np.isnan(drift[0])
    np.testing.assert_allclose(drift[1:], expected, rtol=1e-6)


def test_gram_tables_include_effective_and_stable_rank(three_step_store):
    result = invoke("metrics", three_step_store, "--metric", "gram")
    assert result.exit_code == 0, describe(result)
    for name in ("gram_effective_rank", "gram_stable_rank", "gram_drift"):
        assert f"{name} (step × layer)" in result.stdout, result.stdout


def test_tl_records_stay_out_of_the_tables_but_not_out_of_json(three_step_store):
    result = invoke("metrics", three_step_store, "--metric", "tl")
    assert result.exit_code == 0, describe(result)
    assert "target_linearity (step × layer)" in result.stdout
    assert "target_linearity_rank (step × layer)" not in result.stdout
    as_json = invoke("metrics", three_step_store, "--metric", "tl", "--json")
    assert "target_linearity_rank" in as_json.stdout


CNN_SPEC = {"type": "cnn", "in_channels": 1, "input_size": [8, 8], "channels": [4],
            "kernel_sizes": [3], "num_classes": 3, "activation": "relu"}


@pytest.fixture(scope="module")
def conv_store(tmp_path_factory):
    """A CNN whose layers are wider (64 and 256 features) than the 40-sample probe."""
    root = tmp_path_factory.mktemp("cnn")
    run = make_run(root / "run", steps=(0, 10), spec=CNN_SPEC)
    rng = np.random.default_rng(1)
    np.savez(run / "probe.npz", inputs=rng.normal(size=(40, 64)).astype(np.float32),
             targets=rng.integers(0, 3, 40), num_classes=np.int64(3))
    store = root / "cnn.zarr"
    assert not api.audit(str(run), out=store).failed
    return store


def test_tl_of_wide_conv_layers_does_not_depend_on_the_other_groups(conv_store, tmp_path):
    import shutil

    other = tmp_path / "copy.zarr"
    shutil.copytree(conv_store, other)
    alone = api.compute_metrics(conv_store, metrics=["tl"], recompute=True)
    together = api.compute_metrics(other, metrics=["tl", "surrogate"], recompute=True)
    # the dual (n × n) solve for layers wider than the probe, in both calls
    assert (alone["target_linearity_dual"].values == 1).all()
    assert (together["target_linearity_dual"].values == 1).all()
    # 40 samples, 64+ features: the fit interpolates, TL is 1 to the round-off of that solve
    np.testing.assert_allclose(alone["target_linearity"].values, 1.0, atol=1e-12)
    np.testing.assert_allclose(together["target_linearity"].values,
                               alone["target_linearity"].values, rtol=0, atol=1e-12)
