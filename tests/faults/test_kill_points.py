"""Kill a real audit (or export) at each named fault point, rerun it, and compare bitwise with an
uninterrupted run: nothing finished is lost, nothing unfinished looks finished."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import xarray as xr

from flq_audit._faults import ENV_VAR
from flq_audit.store import lock_path
from tests._helpers.cli import TIMEOUT_S, cli_command, cli_env, describe, read_done
from tests._helpers.runs import make_run
from tests.faults._tree import assert_same_store, tree_hashes

pytestmark = pytest.mark.slow

#: (fault, exit code of the interrupted run). 40 samples in batches of 16: batches 0, 1, 2.
KILLS = {
    "store-create": ("kill@store-create", -9),
    "batch-1-of-step-10": ("kill@step-batch:step=10,batch=1", -9),
    "batch-0-of-step-0": ("kill@step-batch:step=0,batch=0", -9),
    "commit-of-step-10": ("kill@step-commit:step=10", -9),
    "commit-of-last-step": ("kill@step-commit:step=20", -9),
    "sigterm-in-step-10": ("term@step-batch:step=10,batch=1", 143),
    "sigint-in-step-0": ("int@step-batch:step=0,batch=2", 130),
}


def _start(args: tuple, fault: str | None) -> subprocess.Popen[str]:
    env = cli_env(**({ENV_VAR: fault} if fault else {}))
    if not fault:
        env.pop(ENV_VAR, None)
    return subprocess.Popen(cli_command(*args), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(procs: dict[str, subprocess.Popen[str]]) -> dict[str, subprocess.CompletedProcess]:
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
        out[name] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    return out


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    """The reference audit and every interrupted audit side by side, then every rerun."""
    root = tmp_path_factory.mktemp("kills")
    run = make_run(root / "run")

    def args(store: Path) -> tuple:
        return (run, "--out", store, "--batch-size", "16", "-q")

    first = {"reference": _start(args(root / "reference.zarr"), None)}
    first |= {name: _start(args(root / f"{name}.zarr"), fault)
              for name, (fault, _) in KILLS.items()}
    killed = _finish(first)
    states = {name: read_done(root / f"{name}.zarr") for name in KILLS}
    reruns = _finish({name: _start(args(root / f"{name}.zarr"), None) for name in KILLS})
    return {"root": root, "run": run, "killed": killed, "reruns": reruns, "states": states}


@pytest.mark.parametrize("name", list(KILLS))
def test_a_killed_audit_reruns_to_the_same_store(campaign, name):
    root = campaign["root"]
    assert campaign["killed"]["reference"].returncode == 0, describe(
        campaign["killed"]["reference"])
    killed = campaign["killed"][name]
    assert killed.returncode == KILLS[name][1], describe(killed)
    assert "Traceback" not in killed.stderr
    rerun = campaign["reruns"][name]
    assert rerun.returncode == 0, describe(rerun)
    assert_same_store(root / f"{name}.zarr", root / "reference.zarr")
    assert not lock_path(root / f"{name}.zarr").exists()
    assert not list(root.glob(f".{name}.zarr.flq-creating"))


def test_a_store_killed_during_creation_is_not_in_place(campaign):
    assert campaign["states"]["store-create"] is None  # built beside, never half in place


@pytest.mark.parametrize(("name", "want"), [
    ("batch-0-of-step-0", [False, False, False]),
    ("batch-1-of-step-10", [True, False, False]),
    ("commit-of-step-10", [True, False, False]),
    ("commit-of-last-step", [True, True, False]),
    ("sigterm-in-step-10", [True, False, False]),
    ("sigint-in-step-0", [False, False, False]),
])
def test_an_interrupted_step_is_not_marked_done(campaign, name, want):
    flags = campaign["states"][name]
    assert flags is not None and flags.tolist() == want


def test_a_killed_export_leaves_no_file_and_the_store_untouched(campaign, tmp_path):
    store = campaign["root"] / "reference.zarr"
    before = tree_hashes(store)
    reference, out = tmp_path / "ref.nc", tmp_path / "out.nc"
    done = _finish({"ref": _start(("export", store, reference), None),
                    "kill": _start(("export", store, out), "kill@export")})
    assert done["ref"].returncode == 0, describe(done["ref"])
    assert done["kill"].returncode == -9, describe(done["kill"])
    assert not out.exists()
    assert tree_hashes(store) == before
    again = _finish({"again": _start(("export", store, out), None)})["again"]
    assert again.returncode == 0, describe(again)
    with xr.open_dataset(out, engine="h5netcdf") as got, \
            xr.open_dataset(reference, engine="h5netcdf") as want:
        xr.testing.assert_identical(got.load(), want.load())
    assert tree_hashes(store) == before
