"""The distributed audit on a real dask.distributed LocalCluster of 2 worker processes: the
store equals the sequential audit's, bitwise, also after a worker is SIGKILLed mid-step."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import zarr

from flq_audit import api
from flq_audit.audit.extensions.base import Extension, StepContext
from flq_audit.options import FLOptions, RunOptions
from tests._helpers.cli import assert_says, cli_env, describe, invoke, run_cli
from tests._helpers.runs import make_run
from tests._helpers.sources import hashed_folder_source
from tests._helpers.stores import assert_same_store, assert_same_variables

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
distributed = pytest.importorskip("dask.distributed")

STEPS = (0, 10, 20, 30)
#: 40 probe samples in batches of 8: five batches per step, so a kill lands mid-step.
BATCH = 8
FL = FLOptions(loss="ce", lr=0.1, batches="full")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("distributed") / "run", STEPS)


@pytest.fixture(scope="module")
def reference(run_dir) -> Path:
    """The sequential audit of ``run_dir`` (FL residual included: it needs step k+1)."""
    store = run_dir.parent / "reference.zarr"
    result = api.audit(str(run_dir), out=store, fl=FL, run=RunOptions(batch_size=BATCH))
    assert result.written == list(STEPS)
    return store


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as local:
        yield local


def _pids(client) -> dict[str, int]:
    return client.run(os.getpid)


def test_workers_option_writes_the_sequential_store(run_dir, reference, tmp_path):
    out = tmp_path / "workers.zarr"
    result = run_cli(run_dir, "--workers", "2", "--out", out, "--batch-size", str(BATCH),
                     "--fl-loss", "ce", "--fl-lr", "0.1", "--fl-batches", "full")
    assert result.returncode == 0, describe(result)
    assert_says(result.stdout, "4 step(s) written, 0 already done, 0 failed", "worker ")
    assert_same_store(reference, out)


def test_a_worker_killed_mid_step_loses_only_that_try(run_dir, reference, cluster, tmp_path):
    with distributed.Client(cluster) as client:
        before = _pids(client)
        armed = sorted(before)[0]
        # the first step this worker runs kills it after its third batch; its nanny starts a
        # fresh (unarmed) process and dask reruns the task
        def arm() -> None:  # runs in the worker process (a local function travels by value)
            os.environ["FLQ_AUDIT_FAULT"] = "kill@step-batch:batch=2"

        client.run(arm, workers=[armed])
        result = api.audit(str(run_dir), out=tmp_path / "killed.zarr", fl=FL,
                           run=RunOptions(batch_size=BATCH, scheduler=cluster.scheduler_address))
        client.wait_for_workers(2)
        after = _pids(client)
    assert before[armed] not in after.values(), "the armed worker was not killed"
    assert sorted(result.written) == list(STEPS) and not result.failed
    assert_same_store(reference, tmp_path / "killed.zarr")


def test_a_step_whose_workers_keep_dying_is_recorded_and_rerun(run_dir, reference, tmp_path):
    import dask

    out = tmp_path / "dying.zarr"
    args = ("--out", out, "--batch-size", str(BATCH), "--fl-loss", "ce", "--fl-lr", "0.1",
            "--fl-batches", "full")
    # workers of their own (a --workers audit also runs steps in its own process); a killed
    # worker's nanny starts a fresh, unarmed one, and no task is retried
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                     dashboard_address=None) as dying, \
            distributed.Client(dying) as client:
        def arm() -> None:  # runs in each worker process
            os.environ["FLQ_AUDIT_FAULT"] = "kill@step-batch:step=20,batch=2"

        client.run(arm)
        first = run_cli(run_dir, "--scheduler", dying.scheduler_address, *args, "--json")
    assert first.returncode == 5, describe(first)
    summary = json.loads(first.stdout)
    assert "20" in summary["failed"] and 20 not in summary["written"]
    by_worker = summary["workers"].values()
    assert sorted(s for tally in by_worker for s in tally["written"]) == summary["written"]
    group = zarr.open_group(str(out), mode="r")
    done, errors = np.asarray(group["done"][:]), [str(e) for e in group["error"][:]]
    assert not done[STEPS.index(20)]
    assert "died while running it" in errors[STEPS.index(20)]
    assert_says(first.stderr, "step 20", "rerun the audit")
    second = run_cli(run_dir, *args)  # resumed by the sequential audit: same store
    assert second.returncode == 0, describe(second)
    assert_says(second.stdout, "already done, 0 failed")
    assert_same_store(reference, out)


class WaitsForAWorker(Extension):
    """In the process that made it, a step waits until another process has written one:
    so a --workers audit's own process cannot audit every step before its worker starts."""

    name: ClassVar[str] = "waits_for_a_worker"

    def __init__(self, store: Path) -> None:
        self.store, self.pid = store, os.getpid()

    def on_step(self, ctx: StepContext) -> Mapping[str, np.ndarray]:
        deadline = time.monotonic() + 180  # a worker starts in seconds; never forever
        while os.getpid() == self.pid and time.monotonic() < deadline:
            if np.asarray(zarr.open_group(str(self.store), mode="r")["done"][:]).any():
                break
            time.sleep(0.1)
        return {}


def test_local_workers_and_this_process_share_the_steps(run_dir, tmp_path):
    """--workers 2: this process and one worker each write steps; the store is the
    sequential audit's."""
    alone = tmp_path / "sequential.zarr"
    api.audit(str(run_dir), out=alone, run=RunOptions(batch_size=BATCH))
    out = tmp_path / "shared.zarr"
    cloudpickle = pytest.importorskip("cloudpickle")
    module = sys.modules[WaitsForAWorker.__module__]  # a test module workers cannot import
    cloudpickle.register_pickle_by_value(module)
    try:
        result = api.audit(str(run_dir), out=out, extensions=[WaitsForAWorker(out)],
                           run=RunOptions(batch_size=BATCH, workers=2))
    finally:
        cloudpickle.unregister_pickle_by_value(module)
    assert sorted(result.written) == list(STEPS) and not result.failed
    assert set(result.workers) == {"client", "0"}, result.workers
    assert all(tally["written"] for tally in result.workers.values()), result.workers
    assert_same_variables(out, alone)


def test_a_step_that_fails_is_recorded_by_its_worker(cluster, tmp_path):
    run = make_run(tmp_path / "run", (0, 10, 20))
    (run / "step_10.safetensors").write_bytes(b"truncated")
    result = api.audit(str(run), out=tmp_path / "s.zarr",
                       run=RunOptions(scheduler=cluster.scheduler_address))
    assert sorted(result.written) == [0, 20] and list(result.failed) == [10]
    assert "step 10" in result.failed[10]
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    assert np.asarray(group["done"][:]).tolist() == [True, False, True]
    assert str(group["error"][1]) == result.failed[10]


def test_duplicates_are_copied_after_their_original(cluster, tmp_path, monkeypatch):
    hashed_folder_source(monkeypatch)
    run = make_run(tmp_path / "run", (0, 10))
    (run / "step_20.safetensors").write_bytes((run / "step_10.safetensors").read_bytes())
    plan = api.plan_audit(f"hashed:{run}", model=str(run / "model_spec.json"),
                          probe=str(run / "probe.npz"), out=tmp_path / "s.zarr")
    assert dict(plan.layout.duplicates) == {20: 10}
    # step 20 can only succeed as a copy: its own file is no checkpoint any more
    (run / "step_20.safetensors").write_bytes(b"not a checkpoint")
    result = api.run_audit(plan, RunOptions(scheduler=cluster.scheduler_address))
    assert sorted(result.written) == [0, 10, 20] and not result.failed, result.failed
    ds = api.open_store(tmp_path / "s.zarr")
    assert ds.duplicate_of.values.tolist() == [-1, -1, 10]
    for name in ("activations", "gram"):
        np.testing.assert_array_equal(ds[name].sel(step=20).values, ds[name].sel(step=10).values)


def test_cluster_options_are_checked(run_dir, tmp_path):
    one = invoke("audit", run_dir, "--workers", "1", "--out", tmp_path / "a.zarr")
    assert one.exit_code == 2, describe(one)
    assert_says(one.stderr, "--workers (workers) must be 2 or more", "leave --workers out")
    both = invoke("audit", run_dir, "--workers", "2", "--scheduler", "tcp://127.0.0.1:8786",
                  "--out", tmp_path / "a.zarr")
    assert both.exit_code == 2, describe(both)
    assert_says(both.stderr, "not both")
    assert not (tmp_path / "a.zarr").exists()


def test_an_unreachable_scheduler_is_a_network_error(run_dir, tmp_path):
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    env = cli_env(DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="1s")
    result = run_cli(run_dir, "--scheduler", address, "--out", tmp_path / "a.zarr", env=env)
    assert result.returncode == 7, describe(result)
    assert_says(result.stderr, f"cannot reach the dask scheduler at '{address}'")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "a.zarr").exists()  # nothing written without a cluster


def test_the_shipped_plan_carries_no_model_and_no_listener(run_dir, tmp_path):
    import pickle
    import threading
    from dataclasses import replace

    import cloudpickle
    from huggingface_hub import HfApi

    from flq_audit.audit.distributed import ship, worker_plan
    from flq_audit.sources.hub import HubSource

    plan = api.plan_audit(str(run_dir), out=tmp_path / "s.zarr")
    hub = HubSource("org/name", api=HfApi(endpoint="http://127.0.0.1:9"))
    lock = threading.Lock()  # a client-side listener holding a lock cannot be pickled
    hub.report_downloads(lambda *_: lock.locked())
    shipped = pickle.loads(cloudpickle.dumps(ship(replace(plan, source=hub), RunOptions())))
    assert shipped.plan.built is None and shipped.plan.source.api.endpoint == "http://127.0.0.1:9"
    rebuilt = worker_plan(ship(plan, RunOptions())).built
    assert rebuilt is not None and rebuilt.module is not plan.built.module
    assert {k: v.shape for k, v in rebuilt.module.state_dict().items()} == {
        k: v.shape for k, v in plan.built.module.state_dict().items()}


@pytest.mark.parametrize(("given", "message"), [
    ({"workers": 0}, r"--workers \(workers\) must be an integer >= 1"),
    ({"workers": 1}, r"must be 2 or more; one worker is the sequential audit"),
    ({"workers": "some"}, r"--workers \(workers\) must be an integer >= 2 or auto; got 'some'"),
    ({"workers": "auto", "scheduler": "tcp://h:8786"}, r"not both"),
    ({"scheduler": " "}, r"--scheduler \(scheduler\) must be an address such as tcp://"),
    ({"workers": 2, "scheduler": "tcp://h:8786"}, r"--workers .* or --scheduler .*, not both"),
])
def test_run_options_check_the_cluster_options(given, message):
    from flq_audit.errors import OptionError

    with pytest.raises(OptionError, match=message):
        RunOptions(**given)


def test_workers_auto_runs_few_steps_sequentially(run_dir, tmp_path):
    """Three steps: a worker would get one; ``auto`` audits them in this process alone."""
    alone = tmp_path / "sequential.zarr"
    api.audit(str(run_dir), steps="0,10,20", out=alone, run=RunOptions(batch_size=BATCH))
    out = tmp_path / "auto.zarr"
    result = run_cli(run_dir, "--steps", "0,10,20", "--workers", "auto", "--out", out,
                     "--batch-size", str(BATCH), "--json")
    assert result.returncode == 0, describe(result)
    summary = json.loads(result.stdout)
    assert summary["written"] == [0, 10, 20] and "workers" not in summary  # sequential
    assert_same_variables(out, alone)


def test_workers_auto_on_two_cores_shares_the_steps(run_dir, tmp_path):
    """Four steps on two cores or more: two steps each, so ``auto`` starts a worker."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores")
    out = tmp_path / "auto.zarr"
    result = api.audit(str(run_dir), out=out, run=RunOptions(batch_size=BATCH, workers="auto"))
    assert sorted(result.written) == list(STEPS) and "client" in getattr(result, "workers", {})
