"""Stores on S3 (a moto server on loopback): the audit, show, metrics, export and report on an
``s3://`` URL, two writers at once, a killed writer taken over, and a missing filesystem."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from flq_audit.store import StepClaims, StoreLocation
from tests._helpers.cli import assert_says, cli_env, describe, invoke, run_cli
from tests._helpers.runs import make_run
from tests._helpers.stores import STEP_VARIABLES, assert_same_variables, audited_reference

STEPS = (0, 10, 20, 30)
COMPARED = (*STEP_VARIABLES, "step", "label", "layer", "width", "gram_width")


@pytest.fixture(scope="module")
def s3_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("s3") / "run", STEPS, n_samples=200)


@pytest.fixture(scope="module")
def s3_reference(s3_run) -> Path:
    return audited_reference(s3_run, s3_run.parent / "reference.zarr")


def _group(location: StoreLocation) -> zarr.Group:
    return zarr.open_group(location.zarr_store(read_only=True), mode="r")


@pytest.mark.slow
def test_digits_audit_into_s3_equals_the_local_audit_and_every_command_reads_it(
        s3_endpoint, digits_run, tmp_path):
    from flq_audit import api

    url = f"s3://{s3_endpoint.new_bucket()}/digits.zarr"
    options = s3_endpoint.options_json
    audited = run_cli(digits_run, "--out", url, "--storage-options", options, "--json")
    assert audited.returncode == 0, describe(audited)
    local = tmp_path / "digits.zarr"
    api.audit(str(digits_run), out=local)
    location = StoreLocation.parse(url, s3_endpoint.storage_options)
    want = zarr.open_group(str(local), mode="r")
    with_data = list(want.array_keys())
    assert sorted(_group(location).array_keys()) == sorted(with_data)
    assert_same_variables(_group(location), want, names=with_data)

    shown = invoke("show", url, "--storage-options", options, "--json")
    assert shown.exit_code == 0, describe(shown)
    summary = json.loads(shown.stdout)
    assert summary["store"] == url and all(s["done"] for s in summary["steps"])
    assert summary["bytes_on_disk"] > 0

    metrics = invoke("metrics", url, "--storage-options", options, "--metric", "tl", "--json")
    assert metrics.exit_code == 0, describe(metrics)
    api.compute_metrics(local, metrics=["tl"])
    np.testing.assert_array_equal(
        api.open_store(url, storage_options=s3_endpoint.storage_options)["target_linearity"],
        api.open_store(local)["target_linearity"])

    nc = tmp_path / "digits.nc"
    exported = invoke("export", url, nc, "--storage-options", options)
    assert exported.exit_code == 0, describe(exported)
    assert nc.is_file()

    folder = tmp_path / "report"
    reported = invoke("report", url, "--storage-options", options, "--out", folder)
    assert reported.exit_code == 0, describe(reported)
    assert (folder / "index.html").is_file() and (folder / "metrics.nc").is_file()


@pytest.mark.slow
def test_two_audits_at_once_on_one_s3_store(s3_endpoint, s3_run, s3_reference):
    from tests.integration.test_claims import run_two_writers

    url = f"s3://{s3_endpoint.new_bucket()}/shared.zarr"
    results = run_two_writers(s3_run, url, "--storage-options", s3_endpoint.options_json)
    written = [set(r["written"]) for r in results]
    assert not written[0] & written[1] and written[0] | written[1] == set(STEPS), written
    claims = StepClaims(StoreLocation.parse(url, s3_endpoint.storage_options))
    for step in STEPS:
        claim = claims.read(step)
        assert claim is not None and claim.finished and claim.claims == 1, (step, claim)
    assert claims.read("template").finished  # the template was built once
    assert_same_variables(_group(claims.location), s3_reference, COMPARED)


@pytest.mark.slow
def test_workers_audit_into_s3_equals_the_local_single_process_audit(
        s3_endpoint, s3_run, s3_reference):
    url = f"s3://{s3_endpoint.new_bucket()}/workers.zarr"
    audited = run_cli(s3_run, "--workers", "2", "--batch-size", "50", "--out", url,
                      "--storage-options", s3_endpoint.options_json, "--json")
    assert audited.returncode == 0, describe(audited)
    assert sorted(json.loads(audited.stdout)["written"]) == sorted(STEPS)
    claims = StepClaims(StoreLocation.parse(url, s3_endpoint.storage_options))
    for step in STEPS:  # every step claimed once, by a worker, and finished
        claim = claims.read(step)
        assert claim is not None and claim.finished and claim.claims == 1, (step, claim)
    assert_same_variables(_group(claims.location), s3_reference, COMPARED)


@pytest.mark.slow
def test_a_killed_writer_is_taken_over_by_the_rerun(s3_endpoint, s3_run, s3_reference):
    url = f"s3://{s3_endpoint.new_bucket()}/killed.zarr"
    args = (s3_run, "--out", url, "--storage-options", s3_endpoint.options_json,
            "--batch-size", "50")
    env = cli_env(FLQ_AUDIT_CLAIM_LEASE="2")
    killed = run_cli(*args, "-q", env={**env, "FLQ_AUDIT_FAULT": "kill@step-batch:step=10,batch=1"})
    assert killed.returncode == -9, describe(killed)
    location = StoreLocation.parse(url, s3_endpoint.storage_options)
    claims = StepClaims(location)
    dead = claims.read(10)
    assert dead is not None and dead.state == "held"
    rerun = run_cli(*args, "--json", env=env)
    assert rerun.returncode == 0, describe(rerun)
    summary = json.loads(rerun.stdout)
    assert summary["skipped"] == [0] and summary["written"] == [10, 20, 30]
    taken = claims.read(10)
    assert taken.finished and taken.claims == 2 and taken.takeovers[0]["from"] == dead.owner
    assert_same_variables(_group(location), s3_reference, COMPARED)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gcsfs") is not None, reason="gcsfs is installed")
def test_a_url_without_its_filesystem_is_a_usage_error_naming_the_package(s3_run, tmp_path):
    result = run_cli(s3_run, "--out", "gs://bucket/x.zarr", cwd=tmp_path)
    assert result.returncode == 2, describe(result)
    assert_says(result.stderr, "gcsfs", "pip install gcsfs")
    assert list(tmp_path.iterdir()) == []  # no local folder named gs:
    shown = invoke("show", "gs://bucket/x.zarr")
    assert shown.exit_code == 2, describe(shown)
    assert_says(shown.stderr, "gcsfs")


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_storage_options_that_are_not_a_json_object_are_a_usage_error(text):
    result = invoke("show", "memory://nowhere/x.zarr", "--storage-options", text)
    assert result.exit_code == 2, describe(result)
    assert_says(result.stderr, "--storage-options")


def test_a_missing_url_store_is_reported_as_missing():
    result = invoke("show", "memory://nowhere/missing.zarr")
    assert result.exit_code == 3, describe(result)
    assert_says(result.stderr, "memory://nowhere/missing.zarr", "does not exist")
