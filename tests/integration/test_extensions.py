"""Per-step extensions through real audits: a new one is one class, built-ins keep their
store variables, non-finite weights are flagged, the plan is never changed."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np
import pytest
import xarray as xr
from safetensors.torch import load_file, save_file

from flq_audit import api
from flq_audit.audit.extensions.base import Extension, StepContext
from flq_audit.errors import FlqAuditWarning, ProbeError
from flq_audit.options import RunOptions
from flq_audit.store import StepWriter, VariableSpec


class ActivationNorms(Extension):
    """Mean squared norm of each layer's input rows: the whole extension is this class."""

    name: ClassVar[str] = "activation_norms"

    def variables(self, layout) -> Sequence[VariableSpec]:
        return [VariableSpec("activation_norm", ("step", "layer"),
                             attrs={"long_name": "mean squared norm of the layer inputs"})]

    def on_batch(self, ctx: StepContext, start: int, stop: int,
                 captured: Mapping[str, np.ndarray]) -> None:
        sums = ctx.scratch.setdefault(self.name, np.zeros(len(ctx.plan.layers)))
        for i, info in enumerate(ctx.plan.layers):
            sums[i] += float((captured[info.name].astype(np.float64) ** 2).sum())

    def on_step(self, ctx: StepContext) -> Mapping[str, np.ndarray]:
        return {"activation_norm": ctx.scratch[self.name] / ctx.plan.probe.n_samples}


def test_a_new_extension_is_one_class(run_dir, tmp_path):
    store = tmp_path / "s.zarr"
    result = api.audit(str(run_dir), out=store, extensions=[ActivationNorms()],
                       run=RunOptions(batch_size=16))
    assert result.written == [0, 10, 20]
    ds = xr.open_zarr(store)
    assert ds.activation_norm.dims == ("step", "layer")
    assert ds.activation_norm.attrs["long_name"] == "mean squared norm of the layer inputs"
    for layer in ds.layer.values:  # independent: from the stored, unpadded activations
        width = int(ds.width.sel(layer=layer))
        rows = ds.activations.sel(layer=layer).values[:, :, :width].astype(np.float64)
        np.testing.assert_allclose(ds.activation_norm.sel(layer=layer).values,
                                   (rows**2).sum(axis=(1, 2)) / rows.shape[1], rtol=1e-6)


def test_extension_preflight_fails_before_any_checkpoint_is_read(run_dir, tmp_path):
    class Refuses(Extension):
        name: ClassVar[str] = "refuses"

        def preflight(self, plan) -> None:
            raise ProbeError(f"needs more than {plan.probe.n_samples} samples")

    with pytest.raises(ProbeError, match="needs more than 40 samples"):
        api.audit(str(run_dir), out=tmp_path / "s.zarr", extensions=[Refuses()])
    assert not (tmp_path / "s.zarr").exists()


def test_class_probe_stores_predictions_and_classifier_weight(run_dir, tmp_path):
    api.audit(str(run_dir), out=tmp_path / "s.zarr")
    ds = xr.open_zarr(tmp_path / "s.zarr")
    classifier = ds.attrs["classifier"]
    assert ds.prediction.dims == ("step", "sample") and int(ds.prediction.min()) >= 0
    state = load_file(run_dir / "step_10.safetensors")
    weight = state[f"{classifier}.weight"].double().numpy()
    np.testing.assert_array_equal(ds.classifier_weight.sel(step=10).values[:, :weight.shape[1]],
                                  weight)


def test_nonfinite_weights_are_flagged_and_warned(run_dir, tmp_path):
    path = run_dir / "step_10.safetensors"
    state = load_file(path)
    state["layers.1.weight"][0, 0] = float("nan")
    save_file(state, str(path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        api.audit(str(run_dir), out=tmp_path / "s.zarr")
    messages = [str(w.message) for w in caught if issubclass(w.category, FlqAuditWarning)]
    assert len(messages) == 1
    assert "step 10" in messages[0] and "'layers.1'" in messages[0]
    flags = xr.open_zarr(tmp_path / "s.zarr").nonfinite.load()
    assert flags.dtype == bool
    assert flags.sel(step=10, layer="layers.1").item()
    assert int(flags.sum()) == 1


def test_weights_only_audits_flag_infinite_weights(run_dir, tmp_path):
    path = run_dir / "step_20.safetensors"
    state = load_file(path)
    state["layers.0.weight"][1] = float("inf")
    save_file(state, str(path))
    with pytest.warns(FlqAuditWarning, match="step 20.*'layers.0'"):
        api.audit(str(run_dir), weights_only=True, out=tmp_path / "w.zarr")
    flags = xr.open_zarr(tmp_path / "w.zarr").nonfinite.load()
    assert flags.sel(step=20, layer="layers.0").item() and int(flags.sum()) == 1


def test_the_runner_never_changes_the_plan(run_dir, tmp_path):
    plan = api.plan_audit(str(run_dir), out=tmp_path / "s.zarr")
    before = (plan.refs, plan.layers, plan.layout, plan.built, plan.already_done)
    api.run_audit(plan)
    assert (plan.refs, plan.layers, plan.layout, plan.built, plan.already_done) == before
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.already_done = (0,)  # type: ignore[misc]
    again = api.plan_audit(str(run_dir), out=tmp_path / "s.zarr")
    assert again.already_done == (0, 10, 20)


def test_step_copy_covers_every_extension_variable(run_dir, tmp_path):
    store = tmp_path / "s.zarr"
    plan = api.plan_audit(str(run_dir), out=store, extensions=[ActivationNorms()])
    api.run_audit(plan)
    writer = StepWriter(store, plan.layout)
    with writer.step(2, files=["copied.safetensors"], sha256=["0" * 64]) as step:
        step.copy_from(1)  # what a byte-identical checkpoint gets
    writer.close()
    ds = xr.open_zarr(store)
    for name in ("activations", "gram", "activation_norm", "prediction", "classifier_weight",
                 "nonfinite"):
        np.testing.assert_array_equal(ds[name].sel(step=20).values, ds[name].sel(step=10).values)
    assert bool(ds.done.sel(step=20)) and "copied.safetensors" in str(ds.files.sel(step=20).values)


def test_a_failing_step_records_its_error_and_stays_undone(run_dir, tmp_path):
    store = tmp_path / "s.zarr"
    plan = api.plan_audit(str(run_dir), out=store)
    api.run_audit(plan)
    writer = StepWriter(store, plan.layout)
    with pytest.raises(RuntimeError, match="disk on fire"), writer.step(1) as step:
        step.write_gram(0, np.ones((2, 2)))
        raise RuntimeError("disk on fire")
    writer.close()
    ds = xr.open_zarr(store)
    assert ds.done.values.tolist() == [True, False, True]
    assert str(ds.error.sel(step=10).values) == "disk on fire"
