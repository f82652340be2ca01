"""Atomic metric groups: a group is visible only once stamped, an interrupted write is redone,
`report` and `export` refuse a group without its stamp, and a locked store is refused at once.

Interruptions are real SIGKILLs of a real ``flq-audit metrics`` subprocess at the named fault
points ``metrics-write`` (a group's first array written) and ``metrics-stamp`` (all of its
arrays written, the stamp not yet).
"""

from __future__ import annotations

import json
import shutil
import signal
import time

import numpy as np
import pytest
import xarray as xr

from flq_audit import api
from flq_audit.errors import MetricError
from flq_audit.store import lock_path, store_lock
from tests._helpers.cli import assert_says, cli_env, describe, invoke, run_cli

pytestmark = pytest.mark.slow
GROUPS = "tl,surrogate,gram,dynamics,nc"
FIRST_OUTPUT = {"tl": "target_linearity", "surrogate": "surrogate"}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """An audited store without metrics, and a copy with an uninterrupted metrics run."""
    from tests._helpers.runs import make_run

    root = tmp_path_factory.mktemp("atomic")
    api.audit(str(make_run(root / "run")), out=root / "clean.zarr")
    shutil.copytree(root / "clean.zarr", root / "reference.zarr")
    api.compute_metrics(root / "reference.zarr", metrics=GROUPS.split(","))
    return root / "clean.zarr", root / "reference.zarr"


def _metric_values(store) -> dict[str, np.ndarray]:
    with xr.open_zarr(str(store), consolidated=False) as ds:
        return {name: ds[name].values for name, var in ds.data_vars.items()
                if "flq_metric" in var.attrs and var.attrs["flq_metric"] != "fl"}


def _assert_same_metrics(store, reference) -> None:
    got, want = _metric_values(store), _metric_values(reference)
    assert sorted(got) == sorted(want)
    for name, values in want.items():
        assert got[name].tobytes() == values.tobytes(), name  # bitwise, NaN included


@pytest.mark.parametrize(("point", "group"), [("metrics-write", "surrogate"),
                                              ("metrics-stamp", "tl")])
def test_kill_during_metrics_then_rerun_is_bitwise_an_uninterrupted_run(
        pristine, tmp_path, point, group):
    clean, reference = pristine
    store = tmp_path / "s.zarr"
    shutil.copytree(clean, store)
    killed = run_cli("metrics", store, "--metric", GROUPS,
                     env=cli_env(FLQ_AUDIT_FAULT=f"kill@{point}:group={group}"))
    assert killed.returncode == -signal.SIGKILL, describe(killed)

    with xr.open_zarr(str(store), consolidated=False) as ds:
        stamped = json.loads(ds.attrs.get("flq_metrics", "{}"))
        assert group not in stamped  # the interrupted group never looks current
        assert any(var.attrs.get("flq_group") == group for var in ds.data_vars.values())
        with pytest.raises(MetricError, match="incomplete"):
            ds.flq.metric(FIRST_OUTPUT[group])
        written = sorted(v for v, var in ds.data_vars.items()
                         if var.attrs.get("flq_group") == group)
    assert not lock_path(store).exists()  # no lock file outlives the killed run
    shown = invoke("show", store, "--json")
    assert shown.exit_code == 0, describe(shown)
    summary = json.loads(shown.stdout)
    assert sorted(summary["incomplete_metrics"]) == written
    assert not set(written) & set(summary["metrics"])
    assert "target_linearity_rank" in summary["metrics"] or group == "tl"
    table = invoke("show", store)
    assert_says(table.stdout, f"incomplete {', '.join(n for n in summary['incomplete_metrics'])}",
                "interrupted")
    for args in (("report", store, "--out", tmp_path / "figures"),
                 ("export", store, tmp_path / "m.nc")):
        refused = invoke(*args)
        assert refused.exit_code == 4, describe(refused)
        assert_says(refused.stderr, f"metric group '{group}'", "incomplete",
                    f"flq-audit metrics {store} --metric {group}")
        assert refused.exception is None or isinstance(refused.exception, SystemExit)
    assert not (tmp_path / "m.nc").exists()

    rerun = invoke("metrics", store, "--metric", GROUPS)
    assert rerun.exit_code == 0, describe(rerun)
    _assert_same_metrics(store, reference)
    report = invoke("report", store, "--out", tmp_path / "figures")
    assert report.exit_code == 0, describe(report)
    assert (tmp_path / "figures" / "target_linearity.png").is_file()


def test_recompute_rewrites_a_current_group_with_the_same_values(pristine, tmp_path):
    _, reference = pristine
    store = tmp_path / "s.zarr"
    shutil.copytree(reference, store)
    chunk = next((store / "target_linearity" / "c").rglob("*"))
    while not chunk.is_file():
        chunk = next(chunk.rglob("*"))
    before = chunk.stat().st_mtime_ns
    time.sleep(0.01)
    unchanged = invoke("metrics", store, "--metric", "tl")
    assert unchanged.exit_code == 0, describe(unchanged)
    assert chunk.stat().st_mtime_ns == before  # current: read back, not rewritten
    forced = invoke("metrics", store, "--metric", "tl", "--recompute")
    assert forced.exit_code == 0, describe(forced)
    assert chunk.stat().st_mtime_ns > before
    _assert_same_metrics(store, reference)


def test_locked_store_is_refused_before_any_computation(pristine, tmp_path):
    clean, _ = pristine
    store = tmp_path / "s.zarr"
    shutil.copytree(clean, store)
    with store_lock(store):
        refused = run_cli("metrics", store, "--metric", GROUPS,
                          env=cli_env(FLQ_AUDIT_FAULT="kill@metrics-write"))
    # the fault point would kill a run that reached the write: a refusal never gets there
    assert refused.returncode == 4, describe(refused)
    assert_says(refused.stderr, "being written")
    assert _metric_values(store) == {}


def test_a_missing_store_is_reported_and_nothing_is_created(tmp_path):
    missing = tmp_path / "no" / "such" / "s.zarr"
    result = invoke("metrics", missing)
    assert result.exit_code == 3, describe(result)
    assert_says(result.stderr, "does not exist")
    assert list(tmp_path.iterdir()) == []


def test_tl_options_and_loose_parameters_are_not_mixed(pristine):
    from flq_audit.errors import OptionError
    from flq_audit.metrics import TLOptions

    clean, _ = pristine
    with pytest.raises(OptionError, match="not both"):
        api.compute_metrics(clean, metrics=["tl"], tl=TLOptions(ridge=1.0), pca=4)
