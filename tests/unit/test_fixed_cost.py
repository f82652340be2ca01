"""What an audit does not load: xarray, pandas, dask, matplotlib and transformers stay out of a
spec-model audit, while ``import flq_audit`` still gives ``ds.flq`` once xarray is imported."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

#: Modules a spec-model audit of a local folder has no use for.
NOT_NEEDED = ("xarray", "pandas", "dask", "matplotlib", "transformers", "distributed",
              "flq_audit.reading", "flq_audit.metrics")


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=True)
    return out.stdout.strip()


def test_import_flq_audit_does_not_import_xarray_but_registers_the_accessor_with_it():
    code = ("import sys, flq_audit\n"
            "print('xarray' in sys.modules, 'pandas' in sys.modules)\n"
            "import xarray as xr\n"
            "ds = xr.Dataset({'a': ('x', [1, 2])})\n"
            "print(type(ds.flq).__module__)\n")
    assert _run(code).splitlines() == ["False False", "flq_audit.reading._accessor"]


def test_accessor_is_registered_when_xarray_was_imported_first():
    code = ("import xarray as xr, flq_audit\n"
            "print(type(xr.Dataset().flq).__name__)\n")
    assert _run(code) == "FlqAccessor"


def test_xarray_imported_after_flq_audit_keeps_its_package_resources():
    code = ("import flq_audit, xarray, importlib.resources as r\n"
            "print(r.files('xarray').joinpath('static').is_dir(), xarray.__spec__.name)\n")
    assert _run(code) == "True xarray"


def test_a_spec_model_audit_imports_none_of_the_read_side(run_dir, tmp_path):
    store = tmp_path / "s.zarr"
    code = ("import sys\n"
            "from flq_audit.cli import main\n"
            f"sys.argv = ['flq-audit', {str(run_dir)!r}, '--out', {str(store)!r}, '--quiet']\n"
            "try:\n"
            "    main()\n"
            "except SystemExit as end:\n"
            "    assert not end.code, end.code\n"
            f"print(sorted(m for m in {NOT_NEEDED!r} if m in sys.modules))\n")
    assert _run(code) == "[]"
    assert (store / "zarr.json").is_file()


@pytest.mark.parametrize("dtype", ["float32", "float64", "int64", "int8", "uint16", "bool"])
@pytest.mark.parametrize("fill", [0, 1, -1.5, float("nan")])
def test_template_fill_values_are_the_ones_xarray_writes(dtype, fill):
    from xarray.backends.zarr import FillValueCoder

    from flq_audit.store._template import _encoded_fill

    kind = np.dtype(dtype).kind
    if kind in "iub" and (fill != fill or fill != int(fill) or (kind == "u" and fill < 0)):
        pytest.skip("not a value of this dtype")
    assert _encoded_fill(fill, np.dtype(dtype)) == FillValueCoder.encode(fill, np.dtype(dtype))


def test_show_reads_the_store_without_xarray(run_dir, tmp_path):
    from flq_audit import api

    store = tmp_path / "s.zarr"
    api.audit(str(run_dir), out=store)
    code = ("import sys\n"
            "from flq_audit.cli import main\n"
            f"sys.argv = ['flq-audit', 'show', {str(store)!r}, '--json']\n"
            "try:\n"
            "    main()\n"
            "except SystemExit as end:\n"
            "    assert not end.code, end.code\n"
            "print(sorted(m for m in ('xarray', 'pandas', 'dask', 'torch') if m in sys.modules))\n")
    assert _run(code).splitlines()[-1] == "[]"
