"""The NetCDF export passes the CF checker (``cfchecker`` from PyPI, command ``cfchecks``)
with no error: typed ``flag_values``, strings as CF character arrays."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from flq_audit import api
from tests._helpers.requires import missing
from tests._helpers.runs import make_run

#: The checker's three tables, minimal: the export uses no standard names, area types or
#: regions, and the real tables would be downloaded (the tests run offline).
TABLES = {
    "names.xml": "<standard_name_table><version_number>1</version_number><last_modified>"
                 "2020-01-01T00:00:00Z</last_modified><entry id=\"air_temperature\">"
                 "<canonical_units>K</canonical_units></entry></standard_name_table>",
    "areas.xml": "<standard_area_type_table><version_number>1</version_number><date>"
                 "2020-01-01T00:00:00Z</date><entry id=\"land\"></entry>"
                 "</standard_area_type_table>",
    "regions.xml": "<standard_region_table><version_number>1</version_number><date>"
                   "2020-01-01T00:00:00Z</date><entry id=\"africa\"></entry>"
                   "</standard_region_table>",
}


def _cfchecks() -> list[str]:
    try:
        import cfchecker.cfchecks  # noqa: F401  (needs cfunits and the udunits2 C library)
    except (ImportError, OSError) as err:
        missing(f"cfchecker is not importable ({err}): pip install cfchecker "
                    "(and the udunits2 library, e.g. apt-get install libudunits2-0)")
    script = Path(sys.executable).with_name("cfchecks")
    return [str(script)] if script.exists() else [shutil.which("cfchecks") or "cfchecks"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cf")
    store = root / "s.zarr"
    assert not api.audit(str(make_run(root / "run")), out=store).failed
    api.compute_metrics(store, metrics=["tl", "gram", "dynamics"])
    return api.export(store, root / "metrics.nc")


def test_export_passes_the_cf_checker_with_no_error(exported, tmp_path):
    command = _cfchecks()
    for name, text in TABLES.items():
        (tmp_path / name).write_text('<?xml version="1.0"?>\n' + text)
    result = subprocess.run(
        [*command, "-s", tmp_path / "names.xml", "-a", tmp_path / "areas.xml",
         "-r", tmp_path / "regions.xml", exported],
        capture_output=True, text=True, timeout=300, check=False)
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert "ERRORS detected: 0" in output, output
    assert not [line for line in output.splitlines() if line.startswith("ERROR:")], output


def test_strings_and_flags_read_back_as_they_were(exported):
    with xr.open_dataset(exported) as ds:
        assert [str(v) for v in ds["layer"].values] == ["layers.0", "layers.1", "layers.2"]
        assert ds["done"].values.tolist() == [1, 1, 1]
        assert ds["done"].attrs["flag_values"].dtype == ds["done"].dtype
        np.testing.assert_array_equal(ds["done"].attrs["flag_values"], [0, 1])
        assert ds["done"].attrs["flag_meanings"] == "false true"
