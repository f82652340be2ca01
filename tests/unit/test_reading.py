"""The read side in one package: ``flq_audit.reading``, ``api.report()`` for the CLI and the
demo, ``show`` printing ``ds.flq.summary()``, the 0.2 module paths, torch-free Gram maths."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import numpy as np
import pytest

import flq_audit
from flq_audit import api, reading
from tests._helpers.cli import describe, invoke

#: 0.2 module path → a name it gave, now defined in flq_audit.reading.
OLD_PATHS = {
    "flq_audit.report": "sequential_verdict",
    "flq_audit.export": "to_netcdf",
    "flq_audit.report_html": "render_page",
    "flq_audit.figures": "tl_heatmap",
    "flq_audit.accessor": "StoreSummary",
}


@pytest.mark.parametrize(("old", "name"), sorted(set(OLD_PATHS.items()) - {
    ("flq_audit.report", "sequential_verdict")}))
def test_old_read_side_paths_warn_and_give_the_same_objects(old, name, monkeypatch):
    monkeypatch.delitem(sys.modules, old, raising=False)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to flq_audit.reading") as caught:
        __import__(old)  # as an import statement does
    assert getattr(sys.modules[old], name) is getattr(reading, name)
    assert caught[0].filename == __file__  # attributed to the importing line


def test_report_module_is_the_comparison_and_its_old_names_warn_on_use(monkeypatch):
    """``flq_audit.report.compare`` is current (no warning on import); the 0.2 names that
    moved to flq_audit.reading still resolve, warning at the line that uses them."""
    import warnings

    monkeypatch.delitem(sys.modules, "flq_audit.report", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module = importlib.import_module("flq_audit.report")
        assert module.compare.__name__ == "compare"
    for name in ("sequential_verdict", "write_report", "tl_heatmap"):
        with pytest.warns(DeprecationWarning, match="flq_audit.report moved") as caught:
            value = getattr(module, name)
        assert value is getattr(reading, name)
        assert caught[0].filename == __file__
    with pytest.raises(AttributeError):
        _ = module.no_such_name


def test_store_and_read_side_work_with_torch_unimportable():
    """``import torch`` fails in the child: the store, the read side and the store's Gram maths
    must not need it."""
    code = ("import sys\nsys.modules['torch'] = None\n"
            "import numpy as np\n"
            "import flq_audit.store, flq_audit.store._writer, flq_audit.reading\n"
            "from flq_audit.reading import _export, _folder, _html, _report\n"
            "from flq_audit._gram_maths import gram_of_matrix\n"
            "print(gram_of_matrix(np.arange(6.0).reshape(2, 3)).tolist())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [[9.0, 12.0, 15.0], [12.0, 17.0, 22.0], [15.0, 22.0, 29.0]]


def test_gram_maths_take_torch_tensors_as_models_hold_them():
    torch = pytest.importorskip("torch")
    from flq_audit._gram_maths import gram_of_matrix

    values = np.array([[1.0, -2.0, 0.5], [3.0, 0.25, -1.0]])
    expected = np.einsum("ki,kj->ij", values, values)  # Σ_k w_ki w_kj
    for tensor in (torch.tensor(values, dtype=torch.bfloat16, requires_grad=True),
                   torch.nn.Parameter(torch.tensor(values, dtype=torch.float32)),
                   torch.tensor(values, dtype=torch.float64), values):
        gram = gram_of_matrix(tensor)
        assert gram.dtype == np.float64
        np.testing.assert_array_equal(gram, expected)  # every value is exact in bfloat16
    with pytest.raises(ValueError, match="2-D"):
        gram_of_matrix(np.ones(3))


def test_api_report_writes_the_folder_the_cli_prints(run_dir, tmp_path):
    store = tmp_path / "s.zarr"
    api.audit(str(run_dir), out=store)
    said = api.report(store)
    folder = tmp_path / "s-report"
    assert said.folder == folder
    assert said.page == folder / "index.html" and said.page.is_file()
    assert said.netcdf == folder / "metrics.nc" and said.netcdf.is_file()
    assert {p.name for p in said.figures} >= {"target_linearity.png", "curves.png"}
    assert [row[0] for row in said.layers] == [str(x) for x in api.open_store(store)["layer"].values]
    assert said.verdict in said.page.read_text()
    again = invoke("report", store, "--json")  # the same folder again: a report's own
    assert again.exit_code == 0, describe(again)
    printed = json.loads(again.stdout)
    assert printed["verdict"] == said.verdict and printed["findings"] == said.findings
    assert [row["layer"] for row in printed["layers"]] == [row[0] for row in said.layers]
    assert printed["page"] == str(said.page)


def test_api_report_refuses_a_folder_of_other_files_before_computing(run_dir, tmp_path):
    from flq_audit.errors import UnsafeDeletionError

    store = tmp_path / "s.zarr"
    api.audit(str(run_dir), out=store)
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(UnsafeDeletionError, match="holds files flq-audit report did not write"):
        api.report(store, folder)
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
    assert not api.open_store(store).flq.summary().metrics  # nothing was computed


def test_show_prints_the_accessor_summary_with_stale_metrics(run_dir, tmp_path):
    store = tmp_path / "s.zarr"
    checkpoint = run_dir / "step_20.safetensors"
    good = checkpoint.read_bytes()
    checkpoint.write_bytes(b"not a safetensors file")
    assert api.audit(str(run_dir), out=store).failed  # step 20 failed: TL over steps 0, 10
    api.compute_metrics(store, metrics=["tl"])
    checkpoint.write_bytes(good)
    assert not api.audit(str(run_dir), out=store).failed  # step 20 done: the TL is stale
    summary = api.open_store(store).flq.summary()
    assert "target_linearity" in summary.metrics
    assert "target_linearity" in summary.stale_metrics and not summary.incomplete_metrics
    shown = invoke("show", store, "--json")
    assert shown.exit_code == 0, describe(shown)
    assert json.loads(shown.stdout) == json.loads(json.dumps(summary.to_dict()))
    text = invoke("show", store)
    assert "stale   tl (computed on 2 of 3 done steps" in text.stdout.replace("\n", " ")


def test_summary_measures_a_url_store(run_dir):
    import fsspec

    url = "memory://summary-url.zarr"
    api.audit(str(run_dir), out=url)
    try:
        summary = api.open_store(url).flq.summary()
        expected = sum(fsspec.filesystem("memory").du("/summary-url.zarr", total=False).values())
        assert summary.store == url
        assert summary.bytes_on_disk == expected > 0
    finally:
        fsspec.filesystem("memory").rm("/summary-url.zarr", recursive=True)


def test_the_package_registers_the_accessor_without_loading_the_rest():
    code = ("import sys, flq_audit\n"
            "print(sorted(m for m in ('flq_audit.reading._export', 'flq_audit.reading._figures',"
            " 'flq_audit.reading._html', 'matplotlib', 'dask.array') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "[]"
    assert hasattr(flq_audit.reading, "FlqAccessor")


def test_store_summary_read_with_zarr_equals_the_accessor_summary(run_dir, tmp_path):
    import zarr

    from flq_audit._stamps import STAMPS_ATTR
    from flq_audit.store._summary import ZarrView

    store = tmp_path / "s.zarr"
    api.audit(str(run_dir), out=store, steps="0,10")
    api.compute_metrics(store, metrics=["tl", "gram"])
    api.audit(str(run_dir), out=store)  # step 20 added: both groups are stale
    ds = api.open_store(store, dask=False)
    view = ZarrView(zarr.open_group(store, mode="r"))
    assert set(view.data_vars) == set(ds.data_vars)
    assert set(view.coords) == set(ds.coords)
    assert view.sizes == dict(ds.sizes)
    assert api.store_summary(store) == ds.flq.summary()
    assert api.store_summary(store).stale_groups == {"gram": [2, 3], "tl": [2, 3]}
    group = zarr.open_group(store, mode="r+")
    group.attrs.pop(STAMPS_ATTR)  # as if the metric run died before stamping
    zarr.consolidate_metadata(store)
    incomplete = api.store_summary(store)
    assert incomplete == api.open_store(store, dask=False).flq.summary()
    assert "target_linearity" in incomplete.incomplete_metrics and not incomplete.metrics


def test_store_summary_of_a_url_store_equals_the_accessor_summary(run_dir):
    import fsspec

    url = "memory://summary-zarr-only.zarr"
    api.audit(str(run_dir), out=url)
    try:
        assert api.store_summary(url) == api.open_store(url).flq.summary()
    finally:
        fsspec.filesystem("memory").rm("/summary-zarr-only.zarr", recursive=True)


def test_store_summary_refuses_what_is_not_a_store(tmp_path):
    from flq_audit.errors import StoreError, StoreNotFoundError

    with pytest.raises(StoreNotFoundError, match="does not exist"):
        api.store_summary(tmp_path / "missing.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match="not a Zarr store"):
        api.store_summary(tmp_path / "plain")
