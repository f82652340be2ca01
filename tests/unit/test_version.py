"""One version everywhere: the changelog's newest entry, the package, the CLI and the stores."""

from __future__ import annotations

import re
from pathlib import Path

import xarray as xr

import flq_audit
from flq_audit import api
from tests._helpers.cli import run_cli
from tests._helpers.runs import make_run

ROOT = Path(__file__).resolve().parents[2]


def _changelog_version() -> str:
    heading = re.search(r"^## \[(\d+\.\d+\.\d+)\]", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert heading is not None, "CHANGELOG.md has no '## [X.Y.Z]' heading"
    return heading.group(1)


def test_the_package_version_is_the_changelog_s_newest_entry():
    assert flq_audit.__version__ == _changelog_version()


def test_version_flag_prints_it():
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"flq-audit {_changelog_version()}"


def test_a_store_records_it(tmp_path):
    run = make_run(tmp_path / "run", steps=(0,))
    api.audit(str(run), out=tmp_path / "s.zarr")
    with xr.open_zarr(tmp_path / "s.zarr") as ds:
        assert ds.attrs["flq_audit_version"] == _changelog_version()
