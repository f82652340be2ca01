"""Living stores: steps added by later audits, in any order, by several writers at once, on
local folders and S3, and a source that gained steps growing the store's axis."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from flq_audit import api
from flq_audit.errors import StoreMismatchError
from flq_audit.options import RunOptions
from flq_audit.store import StepClaims, StoreLocation
from flq_audit.store._grow import JOURNAL_KEY
from flq_audit.store._schema import fixed_width_strings_allowed
from tests._helpers.cli import assert_says, cli_env, describe, run_cli, run_many
from tests._helpers.runs import make_run
from tests._helpers.stores import assert_same_store, assert_same_variables

STEPS = (0, 10, 20, 30, 40)
RUN = RunOptions(batch_size=20)
COMPARED = ("activations", "gram", "done", "targets", "error", "files", "sha256", "step",
            "label", "commit", "duplicate_of", "layer", "width", "gram_width")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("living") / "run", STEPS)


@pytest.fixture(scope="module")
def one_shot(run) -> Path:
    store = run.parent / "one-shot.zarr"
    assert not api.audit(str(run), out=store, run=RUN).failed
    return store


def _audit(run: Path, store: Path | str, steps: str, **kwargs) -> api.AuditResult:
    result = api.audit(str(run), steps=steps, out=store, run=RUN, **kwargs)
    assert not result.failed, result.failed
    return result


def _claims(store: Path | str, **options) -> StepClaims:
    return StepClaims(StoreLocation.parse(store, options or None))


def test_first_then_all_from_the_cli_equals_the_one_shot_store(run, one_shot, tmp_path):
    store = tmp_path / "s.zarr"
    first = run_cli(run, "--steps", "first", "--out", store, "--batch-size", "20", "--json")
    assert first.returncode == 0, describe(first)
    assert json.loads(first.stdout)["written"] == [0]
    plain = xr.open_zarr(store)  # every listed step is laid out, only step 0 is done
    assert plain["step"].values.tolist() == list(STEPS)
    assert plain["done"].values.tolist() == [True, False, False, False, False]
    dry = run_cli(run, "--steps", "all", "--out", store, "--dry-run")
    assert dry.returncode == 0, describe(dry)
    assert_says(dry.stdout, "resume", "done", "new")
    rest = run_cli(run, "--steps", "all", "--out", store, "--batch-size", "20", "--json")
    assert rest.returncode == 0, describe(rest)
    summary = json.loads(rest.stdout)
    assert summary["skipped"] == [0] and summary["written"] == [10, 20, 30, 40]
    assert_same_store(store, one_shot)


def test_three_out_of_order_selections_equal_the_one_shot_store(run, one_shot, tmp_path):
    store = tmp_path / "s.zarr"
    assert _audit(run, store, "0,40").written == [0, 40]
    assert _audit(run, store, "20").written == [20]
    result = _audit(run, store, "all")
    assert result.written == [10, 30] and result.skipped == [0, 20, 40]
    assert_same_store(store, one_shot)
    for step in STEPS:  # each step was taken once
        assert _claims(store).read(step).claims == 1


def test_two_cli_audits_of_different_selections_at_once_both_land(run, one_shot, tmp_path):
    store = tmp_path / "shared.zarr"
    args = ("--out", store, "--batch-size", "20", "--json")
    results = run_many({"a": (run, "--steps", "0,20,40", *args),
                        "b": (run, "--steps", "10,20,30", *args)})
    for proc in results.values():
        assert proc.returncode == 0, describe(proc)
    written = [set(json.loads(p.stdout)["written"]) for p in results.values()]
    assert not written[0] & written[1] and written[0] | written[1] == set(STEPS), written
    for step in STEPS:
        claim = _claims(store).read(step)
        assert claim is not None and claim.finished and claim.claims == 1, (step, claim)
    assert_same_store(store, one_shot)


def _growing_run(tmp_path: Path, first: tuple[int, ...]) -> tuple[Path, Path]:
    """A folder holding ``first`` of the run's checkpoints, and the full run beside it."""
    full = make_run(tmp_path / "full", STEPS)
    growing = tmp_path / "growing"
    growing.mkdir()
    for name in ("model_spec.json", "probe.npz", *(f"step_{s}.safetensors" for s in first)):
        shutil.copy(full / name, growing / name)
    return growing, full


def _add_checkpoints(growing: Path, full: Path, steps: tuple[int, ...]) -> None:
    for step in steps:
        shutil.copy(full / f"step_{step}.safetensors", growing / f"step_{step}.safetensors")


def test_a_source_that_gained_steps_grows_the_store_at_its_end(tmp_path):
    growing, full = _growing_run(tmp_path, (0, 10))
    store = tmp_path / "grown.zarr"
    _audit(growing, store, "all")
    api.compute_metrics(store, metrics=["gram"])  # metric variables grow with the axis
    _add_checkpoints(growing, full, (20, 30, 40))
    plan = api.plan_audit(str(growing), steps="30", out=store)
    assert plan.appended == (20, 30, 40) and plan.store_status == "resume"
    assert _audit(growing, store, "30").written == [30]
    assert _audit(growing, store, "all").written == [20, 40]
    assert not (store / JOURNAL_KEY).exists()
    reference = tmp_path / "reference.zarr"
    _audit(growing, reference, "all")
    assert_same_variables(store, reference, COMPARED)
    plain = xr.open_zarr(store)  # the consolidated metadata knows the grown axis
    assert plain["step"].values.tolist() == list(STEPS)
    assert plain["label"].values.tolist() == [f"step_{s}.safetensors" for s in STEPS]
    assert plain["gram_effective_rank"].sizes["step"] == len(STEPS)
    assert np.isnan(plain["gram_effective_rank"].sel(step=[20, 30, 40]).values).all()
    # metrics of the grown store: the new steps computed, equal to the reference's
    grown = api.compute_metrics(store, metrics=["gram"])
    fresh = api.compute_metrics(reference, metrics=["gram"])
    for name in ("gram_effective_rank", "gram_drift", "gram_cosine_to_final"):
        np.testing.assert_array_equal(grown[name].values, fresh[name].values, err_msg=name)


def test_a_step_between_stored_steps_is_refused_and_the_store_is_kept(tmp_path):
    growing, full = _growing_run(tmp_path, (0, 20))
    store = tmp_path / "s.zarr"
    _audit(growing, store, "all")
    before = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    _add_checkpoints(growing, full, (10, 40))
    with pytest.raises(StoreMismatchError) as caught:
        api.audit(str(growing), steps="all", out=store, run=RUN)
    assert "[10]" in caught.value.message and "after 20" in str(caught.value.hint)
    assert {p: p.read_bytes() for p in store.rglob("*") if p.is_file()} == before
    # selecting only what can be appended works (the unselected step 10 stays out)
    assert _audit(growing, store, "40").written == [40]
    assert xr.open_zarr(store)["step"].values.tolist() == [0, 20, 40]


def test_a_kill_while_the_axis_grows_leaves_a_store_the_rerun_completes(tmp_path):
    growing, full = _growing_run(tmp_path, (0, 10))
    store = tmp_path / "s.zarr"
    _audit(growing, store, "all")
    _add_checkpoints(growing, full, (20, 30, 40))
    args = (growing, "--out", store, "--batch-size", "20")
    killed = run_cli(*args, env={**cli_env(), "FLQ_AUDIT_FAULT": "kill@store-grow:stage=arrays"})
    assert killed.returncode == -9, describe(killed)
    assert (store / JOURNAL_KEY).exists()  # the growth was cut short
    assert xr.open_zarr(store)["step"].values.tolist() == [0, 10]  # readers see the old store
    rerun = run_cli(*args, "--json")
    assert rerun.returncode == 0, describe(rerun)
    assert json.loads(rerun.stdout)["written"] == [20, 30, 40]
    reference = tmp_path / "reference.zarr"
    _audit(growing, reference, "all")
    assert_same_variables(store, reference, COMPARED)
    assert not (store / JOURNAL_KEY).exists()


def test_a_schema_1_store_of_the_selected_steps_grows_at_its_end(run, one_shot, tmp_path):
    store = tmp_path / "old.zarr"
    plan = api.plan_audit(str(run), steps="0,10", out=store)
    old = replace(plan.layout, steps=(0, 10), labels=plan.layout.labels[:2],
                  commits=plan.layout.commits[:2], selected=())
    api.run_audit(replace(plan, layout=old), RUN)
    with fixed_width_strings_allowed():
        zarr.open_group(str(store), mode="r+").attrs["schema_version"] = 1
    assert xr.open_zarr(store)["step"].values.tolist() == [0, 10]
    assert _audit(run, store, "all").written == [20, 30, 40]
    assert_same_variables(store, one_shot, COMPARED)


def test_first_then_all_into_s3_equals_the_one_shot_store(s3_endpoint, run, one_shot):
    url = f"s3://{s3_endpoint.new_bucket()}/living.zarr"
    options = s3_endpoint.storage_options
    _audit(run, url, "first", storage_options=options)
    assert _audit(run, url, "20,40", storage_options=options).written == [20, 40]
    assert _audit(run, url, "all", storage_options=options).written == [10, 30]
    location = StoreLocation.parse(url, options)
    group = zarr.open_group(location.zarr_store(read_only=True), mode="r")
    assert_same_variables(group, one_shot, COMPARED)


def test_two_audits_of_different_selections_at_once_on_s3(s3_endpoint, run, one_shot):
    url = f"s3://{s3_endpoint.new_bucket()}/shared.zarr"
    args = ("--out", url, "--storage-options", s3_endpoint.options_json, "--batch-size",
            "20", "--json")
    results = run_many({"a": (run, "--steps", "0,40", *args),
                        "b": (run, "--steps", "10,20,30,40", *args)})
    for proc in results.values():
        assert proc.returncode == 0, describe(proc)
    claims = _claims(url, **s3_endpoint.storage_options)
    for step in STEPS:
        claim = claims.read(step)
        assert claim is not None and claim.finished and claim.claims == 1, (step, claim)
    group = zarr.open_group(claims.location.zarr_store(read_only=True), mode="r")
    assert_same_variables(group, one_shot, COMPARED)


def test_a_step_the_store_holds_under_another_checkpoint_name_is_refused(tmp_path):
    growing, _ = _growing_run(tmp_path, (0, 10))
    store = tmp_path / "s.zarr"
    _audit(growing, store, "0")
    (growing / "step_10.safetensors").rename(growing / "model_10.safetensors")
    with pytest.raises(StoreMismatchError) as caught:
        api.audit(str(growing), steps="all", out=store, run=RUN)
    assert "'step_10.safetensors'" in caught.value.message
    assert "'model_10.safetensors'" in caught.value.message
    assert xr.open_zarr(store)["done"].values.tolist() == [True, False]
