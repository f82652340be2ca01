"""Interrupt a real ``python -m flq_audit`` run (SIGKILL, SIGINT) and resume it: the result
must equal a store written by one uninterrupted run."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests._helpers.cli import (
    assert_says,
    describe,
    fault_env,
    invoke,
    popen_cli,
    read_done,
    run_cli,
)
from tests._helpers.runs import make_run
from tests._helpers.stores import assert_same_variables

# Four steps of 200 probe samples in batches of 50: four batches per step. Each run is
# interrupted by a fault point (flq_audit._faults) at an exact batch, so what is done when the
# signal lands does not depend on the machine's speed.
STEPS = (0, 10, 20, 30)
N_SAMPLES, BATCH = 200, "50"
#: name -> (fault spec, the exit status it causes, the ``done`` flags it leaves)
FAULTS = {
    "kill": ("kill@step-batch:step=20,batch=1", -signal.SIGKILL, [True, True, False, False]),
    "int": ("int@step-batch:step=10,batch=2", 130, [True, False, False, False]),
}


@pytest.fixture(scope="module")
def big_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("resume") / "run", STEPS, n_samples=N_SAMPLES)


@pytest.fixture(scope="module")
def reference(big_run) -> Path:
    """The same audit, uninterrupted, into another path."""
    from flq_audit import api

    store = big_run.parent / "reference.zarr"
    result = api.audit(str(big_run), out=store, batch_size=int(BATCH))
    assert result.written == list(STEPS) and not result.failed
    return store


@pytest.fixture(scope="module")
def interrupted(big_run, reference) -> dict:
    """Two CLI runs side by side (their start-ups overlap), each stopped by its fault point:
    one SIGKILLs itself in the middle of step 20, the other gets SIGINT in step 10."""
    stores = {name: big_run.parent / f"{name}.zarr" for name in FAULTS}
    procs = {
        name: popen_cli(big_run, "--out", stores[name], "--batch-size", BATCH, "-q",
                        env=fault_env(FAULTS[name][0]))
        for name in FAULTS
    }
    try:
        outputs = {name: proc.communicate(timeout=180) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    return {"stores": stores | {"reference": reference}, "procs": procs, "outputs": outputs}


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_to_the_same_store(big_run, interrupted):
    store, proc = interrupted["stores"]["kill"], interrupted["procs"]["kill"]
    _, err = interrupted["outputs"]["kill"]
    assert proc.returncode == FAULTS["kill"][1], f"exit {proc.returncode}\n{err}"
    done = read_done(store)
    assert done is not None and done.tolist() == FAULTS["kill"][2], done
    # the killed process could not release its claim on step 20: the rerun takes it over
    held = json.loads((store / ".flq" / "claims" / "step-20.json").read_text())
    assert held["state"] == "held" and held["claims"] == 1

    rerun = run_cli(big_run, "--out", store, "--batch-size", BATCH, "--json")
    assert rerun.returncode == 0, describe(rerun)
    summary = json.loads(rerun.stdout)
    done_steps = [s for s, flag in zip(STEPS, done, strict=True) if flag]
    assert summary["skipped"] == done_steps
    assert summary["written"] == [s for s in STEPS if s not in done_steps]
    assert summary["failed"] == {}
    assert not Path(f"{store}.lock").exists()
    taken = json.loads((store / ".flq" / "claims" / "step-20.json").read_text())
    assert taken["state"] == "finished" and taken["claims"] == 2
    assert taken["takeovers"][0]["from"] == held["owner"]
    assert_same_variables(store, interrupted["stores"]["reference"])


@pytest.mark.slow
def test_sigint_exits_130_and_leaves_a_resumable_store(big_run, interrupted):
    store, proc = interrupted["stores"]["int"], interrupted["procs"]["int"]
    _, err = interrupted["outputs"]["int"]
    assert proc.returncode == FAULTS["int"][1], f"exit {proc.returncode}\n{err}"
    assert_says(err, "interrupted", "rerun the same command to resume")
    assert not Path(f"{store}.lock").exists()
    done = read_done(store)
    assert done is not None and done.tolist() == FAULTS["int"][2], done

    result = invoke("audit", big_run, "--out", store, "--batch-size", BATCH, "--json")
    assert result.exit_code == 0, describe(result)
    summary = json.loads(result.stdout)
    done_steps = [s for s, flag in zip(STEPS, done, strict=True) if flag]
    assert summary["skipped"] == done_steps
    assert summary["written"] == [s for s in STEPS if s not in done_steps]
    assert_same_variables(store, interrupted["stores"]["reference"])


# ------------------------------------------------------------ deterministic interruptions
@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("faults") / "run", (0, 10, 20), n_samples=48)


@pytest.fixture(scope="module")
def small_reference(small_run) -> Path:
    from flq_audit import api
    from flq_audit.options import RunOptions

    store = small_run.parent / "reference.zarr"
    api.audit(str(small_run), out=store, run=RunOptions(batch_size=16))
    return store


@pytest.mark.parametrize(("fault", "code"), [
    ("kill@step-commit:step=10", -signal.SIGKILL),  # data landed, done(10) not yet written
    ("kill@step-batch:step=10,batch=1", -signal.SIGKILL),  # half of step 10's rows written
    ("int@step-batch:step=10,batch=1", 130),  # Ctrl-C: a clean exit, the lock released
])
def test_interrupt_at_a_named_point_then_resume(small_run, small_reference, tmp_path, fault,
                                                code):
    from flq_audit import api
    from flq_audit.options import RunOptions
    from tests._helpers.cli import cli_env

    store = tmp_path / "s.zarr"
    done = run_cli(small_run, "--out", store, "--batch-size", "16", "-q",
                   env=cli_env(FLQ_AUDIT_FAULT=fault))
    assert done.returncode == code, describe(done)
    assert read_done(store).tolist() == [True, False, False]
    resumed = api.audit(str(small_run), out=store, run=RunOptions(batch_size=16))
    assert resumed.written == [10, 20] and resumed.skipped == [0]
    assert_same_variables(store, small_reference)
