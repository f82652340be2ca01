"""Bad S3 inputs against a real loopback S3 server (moto): a dead endpoint, a bucket that does
not exist, storage options of the wrong type. Each exits with its documented code, names what
was wrong, prints no traceback and creates nothing."""

from __future__ import annotations

import json
import socket

import pytest

from tests._helpers.cli import assert_says, describe, invoke
from tests._helpers.runs import make_run
from tests._helpers.s3 import KEY, SECRET

pytest.importorskip("s3fs")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("s3-faults") / "run", steps=(0, 10))


def _closed_port() -> int:
    with socket.socket() as sock:  # bound, never listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _objects(endpoint, bucket: str) -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint.url, aws_access_key_id=KEY,
                          aws_secret_access_key=SECRET, region_name="us-east-1")
    return [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]


def _clean(result) -> None:
    assert "Traceback" not in result.stderr + result.stdout, describe(result)
    assert result.exception is None or isinstance(result.exception, SystemExit), describe(result)


def test_a_dead_endpoint_is_a_network_error_naming_it(run):
    dead = f"http://127.0.0.1:{_closed_port()}"
    options = json.dumps({"key": KEY, "secret": SECRET, "client_kwargs": {"endpoint_url": dead}})
    for args in (("audit", run, "--out", "s3://flq-dead/a.zarr"), ("show", "s3://flq-dead/a.zarr")):
        result = invoke(*args, "--storage-options", options)
        assert result.exit_code == 7, describe(result)
        assert_says(result.stderr, f"error: cannot reach '{dead}', the endpoint of store "
                    "'s3://flq-dead/a.zarr'")
        _clean(result)


def test_a_missing_bucket_is_input_missing_naming_the_bucket(run, s3_endpoint):
    kept = s3_endpoint.new_bucket()  # the server's other buckets stay as they are
    url = "s3://flq-no-such-bucket/a.zarr"
    for args in (("audit", run, "--out", url), ("show", url), ("metrics", url)):
        result = invoke(*args, "--storage-options", s3_endpoint.options_json)
        assert result.exit_code == 3, describe(result)
        assert_says(result.stderr, f"error: bucket 'flq-no-such-bucket' of store '{url}' does "
                    "not exist")
        _clean(result)
    assert _objects(s3_endpoint, kept) == []
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint.url, aws_access_key_id=KEY,
                          aws_secret_access_key=SECRET, region_name="us-east-1")
    assert "flq-no-such-bucket" not in [b["Name"] for b in client.list_buckets()["Buckets"]]


@pytest.mark.parametrize(("options", "first"), [
    ({"client_kwargs": 5}, "'client_kwargs' must be a JSON object; got an integer (5)"),
    ({"client_kwargs": {"endpoint_url": 9000}},
     "'client_kwargs.endpoint_url' must be a string; got an integer (9000)"),
    ({"key": KEY, "secret": 7}, "'secret' must be a string; got an integer (7)"),
])
def test_storage_options_of_the_wrong_type_are_a_usage_error(run, s3_endpoint, options, first):
    bucket = s3_endpoint.new_bucket()
    result = invoke("audit", run, "--out", f"s3://{bucket}/a.zarr", "--storage-options",
                    json.dumps(options))
    assert result.exit_code == 2, describe(result)
    assert_says(result.stderr, f"error: --storage-options: {first}")
    _clean(result)
    assert _objects(s3_endpoint, bucket) == []
