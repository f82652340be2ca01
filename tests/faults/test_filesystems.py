"""A filesystem package too old for the store, or one that lacks an operation the store calls:
a usage error (exit 2) naming the package and its version, never an internal error."""

from __future__ import annotations

from importlib.metadata import version

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from flq_audit.errors import OptionError
from flq_audit.store import StepClaims, StoreLocation, _filesystems
from tests._helpers.cli import describe, invoke, squash
from tests._helpers.runs import make_run


class _NoRemoveFileSystem(MemoryFileSystem):
    """An in-memory filesystem without ``rm_file`` (fsspec's default raises NotImplementedError),
    as older filesystem releases are."""

    protocol = "noremove"

    def rm_file(self, path):
        raise NotImplementedError


fsspec.register_implementation("noremove", _NoRemoveFileSystem, clobber=True)


@pytest.mark.skipif(_filesystems.installed_version("s3fs") is None, reason="s3fs is not installed")
def test_an_s3fs_older_than_the_store_needs_is_refused_before_anything_is_written(
        monkeypatch, tmp_path):
    installed = version("s3fs")
    monkeypatch.setitem(_filesystems.MINIMUM_RELEASES, "s3fs", "9999.1")
    run = make_run(tmp_path / "run", steps=(0,))
    result = invoke("audit", str(run), "--out", "s3://bucket/x.zarr", "-q")
    assert result.exit_code == 2, describe(result)
    assert squash(result.stderr).startswith(squash(
        f"error: store 's3://bucket/x.zarr': s3fs {installed} is installed, but flq-audit "
        "needs s3fs >= 9999.1")), describe(result)
    assert "pip install -U 's3fs>=9999.1'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(_filesystems.installed_version("s3fs") is None, reason="s3fs is not installed")
def test_the_installed_s3fs_meets_the_minimum():
    from packaging.version import Version

    assert Version(version("s3fs")) >= Version(_filesystems.MINIMUM_RELEASES["s3fs"])


def test_a_filesystem_without_rm_file_is_a_usage_error_naming_it(tmp_path):
    url = f"noremove://{tmp_path.name}/x.zarr"
    claims = StepClaims(StoreLocation.parse(url), lease_s=30)
    assert claims.claim(3)
    with pytest.raises(OptionError) as caught:
        claims.release(3)  # removes the claim object: rm_file
    assert caught.value.exit_code == 2
    assert str(caught.value).startswith(
        f"store '{url}': the _NoRemoveFileSystem filesystem of tests (version unknown) does not "
        "implement rm_file(), which the store needs")
