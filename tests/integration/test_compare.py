"""flq-audit compare end to end: three short digits runs (two seeds, one with weight decay),
metrics computed where missing, the NetCDF with a run dimension, the report, a verdict per run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from flq_audit import api, reading
from flq_audit.recipes import digits_mlp
from tests._helpers.cli import describe, invoke

pytestmark = pytest.mark.slow

RUNS = {"seed0": (0, 0.0), "seed1": (1, 0.0), "decay": (0, 0.05)}
STEPS = 50


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    for name, (seed, decay) in RUNS.items():
        folder = digits_mlp.train(root / name, total_steps=STEPS, seed=seed, weight_decay=decay)
        result = api.audit(str(folder), out=root / f"{name}.zarr",
                           tags={"seed": seed, "weight_decay": decay})
        assert not result.failed
    return root


def test_compare_writes_netcdf_report_and_a_verdict_per_run(runs, tmp_path):
    stores = [runs / f"{name}.zarr" for name in ("decay", "seed0", "seed1")]
    result = invoke("compare", *stores, "--by", "weight_decay", "--out", tmp_path / "cmp.nc",
                    "--report", tmp_path / "cmp", "--json")
    assert result.exit_code == 0, describe(result)
    said = json.loads(result.stdout)
    assert said["runs"] == ["seed0", "seed1", "decay"]  # by weight_decay; ties keep the order
    assert set(said["computed"]) == {str(s) for s in stores}  # none had metrics yet
    groups = reading.report_groups(api.open_store(stores[0]))
    own = {name: api.compute_metrics(runs / f"{name}.zarr", metrics=groups) for name in RUNS}

    with xr.open_dataset(tmp_path / "cmp.nc", engine="h5netcdf") as nc:
        assert nc.target_linearity.dims == ("run", "step", "layer")
        assert [str(r) for r in nc.run.values] == said["runs"]
        np.testing.assert_array_equal(nc.weight_decay.values, [0.0, 0.0, 0.05])
        for name in RUNS:
            np.testing.assert_array_equal(nc.target_linearity.sel(run=name).values,
                                          own[name].target_linearity.values)
            np.testing.assert_array_equal(nc.t90.sel(run=name).values, own[name].t90.values)
        assert nc.attrs["Conventions"].startswith("CF-1.8")
        assert nc.done.attrs["flag_meanings"] == "false true"

    for verdict in said["verdicts"]:  # each run judged as its own report judges it
        assert verdict["verdict"] == reading.sequential_verdict(own[verdict["run"]])
        tl = own[verdict["run"]].target_linearity
        assert verdict["deepest_tl_last"] == pytest.approx(float(tl.isel(step=-1, layer=-1)))
        assert verdict["by"] == RUNS[verdict["run"]][1]
    deepest = {name: float(m.target_linearity.isel(step=-1, layer=-1)) for name, m in own.items()}
    assert said["most_linear"] == max(deepest, key=deepest.get)

    folder = tmp_path / "cmp"
    for name in ("tl_by_run.png", "depth_profile.png", "crossing_times.png", "verdicts.md",
                 "metrics.nc", "index.html"):
        assert (folder / name).is_file(), name
    page = (folder / "index.html").read_text()
    assert page.count("<img ") == 3 and all(name in page for name in RUNS)
    table = (folder / "verdicts.md").read_text().splitlines()
    assert table[0].startswith("| run | weight_decay |")
    assert sum(line.startswith(f"| {name} |") for line in table for name in RUNS) == 3


def test_no_compute_names_each_store_and_its_missing_groups(runs, tmp_path):
    store = tmp_path / "fresh.zarr"
    api.audit(str(runs / "seed0"), out=store, steps="0,1,2")
    api.compute_metrics(store, metrics=["tl"])
    result = invoke("compare", store, runs / "seed1.zarr", "--no-compute")
    assert result.exit_code == 4, describe(result)
    message = " ".join(result.output.split())
    assert str(store) in message and "surrogate" in message and "tl," not in message


def test_an_unknown_by_attribute_lists_the_ones_the_runs_have(runs):
    result = invoke("compare", runs / "seed0.zarr", runs / "seed1.zarr", "--by", "lr")
    assert result.exit_code == 2, describe(result)
    message = " ".join(result.output.split())
    assert "--by lr" in message and "seed" in message and "weight_decay" in message


def test_the_python_api_gives_the_same_comparison(runs):
    from flq_audit import report

    result = report.compare([runs / "seed0.zarr", runs / "decay.zarr"], by="weight_decay")
    assert [v.run for v in result.verdicts] == ["seed0", "decay"]
    assert result.metrics.sizes["run"] == 2 and result.netcdf is None and result.folder is None
