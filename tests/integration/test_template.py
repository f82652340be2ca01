"""The store template, written directly with zarr, is what ``xarray.Dataset.to_zarr`` writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from flq_audit import api
from flq_audit.options import CaptureOptions, RunOptions
from flq_audit.store._schema import encoding, fixed_width_strings_allowed, template
from flq_audit.store._template import step_chunked, write_template
from tests._helpers.runs import make_run


def _metadata(store: Path, name: str) -> dict:
    return json.loads((store / name / "zarr.json").read_text())


@pytest.mark.parametrize("probe", [True, False], ids=["probe", "weights-only"])
def test_small_arrays_and_attributes_match_xarray_to_zarr(tmp_path, probe):
    run = make_run(tmp_path / "run", (0, 10, 20))
    layout = api.plan_audit(str(run), out=tmp_path / "x.zarr", weights_only=not probe,
                            capture=CaptureOptions(max_samples=30),
                            run=RunOptions(device="cpu")).layout
    direct, reference = tmp_path / "direct.zarr", tmp_path / "reference.zarr"
    write_template(str(direct), layout, version="9.9")

    tpl = template(layout, version="9.9")
    ds = tpl.to_dataset()  # the independent writer: xarray's own encoding rules
    with fixed_width_strings_allowed():
        ds.to_zarr(reference, mode="w-", zarr_format=3, consolidated=False,
                   encoding=step_chunked(tpl, encoding(layout)))

    assert (probe and "class_label" in ds.coords) or (not probe and "sample" not in ds.dims)
    for name in ds.variables:
        assert _metadata(direct, str(name)) == _metadata(reference, str(name)), name
    assert _metadata(direct, ".")["attributes"] == _metadata(reference, ".")["attributes"]
    small = list(ds.variables)
    got = xr.open_zarr(direct, consolidated=False)[small].load()
    want = xr.open_zarr(reference, consolidated=False)[small].load()
    xr.testing.assert_identical(got, want)
    assert got["label"].dtype.kind == "U" and not got["done"].values.any()
    # the data arrays are declared with the same coordinates xarray would attach
    full = xr.open_zarr(direct, consolidated=False)
    assert set(full["gram"].coords) == {"step", "label", "commit", "layer", "layer_kind",
                                        "depth", "width", "gram_width", "gram_form",
                                        "gram_rows"}
    assert np.isnan(full["gram"].values).all()


def test_writing_the_template_imports_no_dask(tmp_path):
    import subprocess
    import sys

    run = make_run(tmp_path / "run", (0, 10))
    code = (
        "import sys\n"
        "from flq_audit import api\n"
        "from flq_audit.options import RunOptions\n"
        "from flq_audit.store._template import write_template\n"
        f"layout = api.plan_audit({str(run)!r}, out={str(tmp_path / 'x.zarr')!r},"
        " run=RunOptions(device='cpu')).layout\n"
        f"write_template({str(tmp_path / 't.zarr')!r}, layout, version='0')\n"
        "print('dask' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "False", done.stderr
