"""Per-step claims in the store: create-if-absent, leases, takeover, heartbeat, and two real
audits writing one local store at once."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import zarr

from flq_audit.store import StepClaims, StoreLocation
from tests._helpers.cli import popen_cli
from tests._helpers.runs import make_run
from tests._helpers.stores import assert_same_variables, audited_reference

STEPS = (0, 10, 20, 30, 40, 50)


def _locations(tmp_path: Path, request) -> StoreLocation:
    if request.param == "local":
        return StoreLocation.parse(tmp_path / "s.zarr")
    return StoreLocation.parse(f"memory://claims-{tmp_path.name}/s.zarr")


@pytest.fixture(params=["local", "memory"])
def where(tmp_path, request) -> StoreLocation:
    return _locations(tmp_path, request)


def test_only_one_of_many_racing_writers_gets_a_new_claim(where):
    writers = [StepClaims(where, lease_s=30) for _ in range(8)]
    barrier = threading.Barrier(len(writers))
    won: list[bool] = [False] * len(writers)

    def race(i: int) -> None:
        barrier.wait()
        won[i] = writers[i].claim(7)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(len(writers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(won) == 1
    winner = writers[won.index(True)]
    assert winner.read(7).owner == winner.owner and winner.read(7).claims == 1
    for w in writers:
        w.close()


def test_a_live_claim_is_refused_an_expired_one_taken_over_and_counted(where):
    first = StepClaims(where, owner="elsewhere:1:first", lease_s=0.4)
    assert first.claim(3)
    first.close()  # no heartbeat: the lease runs out
    second = StepClaims(where, owner="elsewhere:2:second", lease_s=30)
    assert not second.claim(3)  # live
    time.sleep(0.6)
    assert second.claim(3)
    taken = second.read(3)
    assert taken.owner == "elsewhere:2:second" and taken.claims == 2
    assert [t["from"] for t in taken.takeovers] == ["elsewhere:1:first"]
    assert not first.renew(3)  # the old owner learns that it lost the step
    second.finish(3)
    assert not StepClaims(where, lease_s=30).claim(3)  # finished: nobody writes it again
    assert second.read(3).finished and second.read(3).claims == 2
    second.close()


def test_the_heartbeat_keeps_a_claim_alive_past_its_lease(where):
    holder = StepClaims(where, owner="elsewhere:1:holder", lease_s=0.6)
    assert holder.claim(1)
    time.sleep(1.5)  # more than two leases: renewed every lease/3
    other = StepClaims(where, owner="elsewhere:2:other", lease_s=30)
    assert not other.claim(1)
    holder.close()
    time.sleep(0.9)
    assert other.claim(1)
    other.close()


def test_release_lets_the_next_writer_claim_as_new(where):
    with StepClaims(where, lease_s=30).hold(4) as mine:
        assert mine
    assert StepClaims(where, lease_s=30).read(4).finished
    claims = StepClaims(where, lease_s=30)
    with pytest.raises(RuntimeError), claims.hold(5):
        raise RuntimeError("step failed")
    assert claims.read(5) is None
    assert claims.claim(5) and claims.read(5).claims == 1
    claims.close()


# ------------------------------------------------------------------ two real audits at once
@pytest.fixture(scope="module")
def wide_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("claims") / "run", STEPS, n_samples=400)


@pytest.fixture(scope="module")
def wide_reference(wide_run) -> Path:
    return audited_reference(wide_run, wide_run.parent / "reference.zarr")


def run_two_writers(run: Path, out: str, *extra: str, env: dict | None = None) -> list[dict]:
    """Two CLI audits of the same steps into one store, started together; both must exit 0."""
    procs = [popen_cli(run, "--out", out, "--batch-size", "50", "--json", *extra, env=env)
             for _ in range(2)]
    results = []
    for proc in procs:
        out_text, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"exit {proc.returncode}\n{out_text}\n{err}"
        results.append(json.loads(out_text))
    return results


def assert_each_step_written_once(results: list[dict], claims: StepClaims) -> None:
    written = [set(r["written"]) for r in results]
    assert not written[0] & written[1], f"a step was written by both writers: {written}"
    assert written[0] | written[1] == set(STEPS)
    for step in STEPS:
        claim = claims.read(step)
        assert claim is not None and claim.finished and claim.claims == 1, (step, claim)


@pytest.mark.slow
def test_two_audits_at_once_on_one_local_store(wide_run, wide_reference, tmp_path):
    store = tmp_path / "shared.zarr"
    results = run_two_writers(wide_run, str(store))
    assert_each_step_written_once(results, StepClaims(store))
    assert_same_variables(store, wide_reference)
    from flq_audit import api

    assert api.open_store(store)["done"].values.all()


def test_an_audit_into_memory_equals_the_local_one(wide_run, wide_reference, tmp_path):
    from flq_audit import api
    from flq_audit.options import RunOptions

    url = f"memory://audit-{tmp_path.name}/x.zarr"
    result = api.audit(str(wide_run), out=url, run=RunOptions(batch_size=50))
    assert result.written == list(STEPS) and str(result.store) == url
    got = zarr.open_group(StoreLocation.parse(url).zarr_store(read_only=True), mode="r")
    assert_same_variables(got, wide_reference)
    ds = api.open_store(url)
    assert ds["done"].values.all() and ds.encoding["source"] == url




def test_a_finished_claim_is_reopened_only_on_request_and_counted(where):
    claims = StepClaims(where, lease_s=30)
    assert claims.claim(6)
    claims.finish(6)
    other = StepClaims(where, lease_s=30)
    assert not other.claim(6)
    assert other.reopen(6)  # the runner does this when done(6) is false in the store
    reopened = other.read(6)
    assert reopened.owner == other.owner and reopened.claims == 2 and not reopened.finished
    assert not claims.reopen(6)  # held now, not finished: nothing to reopen
    other.close()


# ------------------------------------------------------------------ show --repair
def _as_left_by_a_writer_killed_before_finishing(store: Path) -> dict:
    """Drop the provenance and the consolidated metadata the last writer writes as it
    finishes; return the provenance that was there."""
    meta_file = store / "zarr.json"
    meta = json.loads(meta_file.read_text())
    provenance = json.loads(meta["attributes"].pop("checkpoints"))
    meta.pop("consolidated_metadata", None)
    meta_file.write_text(json.dumps(meta))
    return provenance


def test_show_repair_finishes_a_store_whose_last_writer_died(wide_reference, tmp_path):
    import shutil

    from flq_audit.store import is_consolidated
    from tests._helpers.cli import invoke

    store = tmp_path / "s.zarr"
    shutil.copytree(wide_reference, store)
    want = _as_left_by_a_writer_killed_before_finishing(store)
    assert len(want) == len(STEPS) and not is_consolidated(store)
    result = invoke("show", store, "--repair", "--json")
    assert result.exit_code == 0, result.output
    assert f"provenance of {len(STEPS)} done step(s) written" in result.stderr
    assert json.loads(zarr.open_group(str(store), mode="r").attrs["checkpoints"]) == want
    assert is_consolidated(store)
    assert_same_variables(store, wide_reference)


def test_show_repair_is_refused_while_a_writer_holds_a_step(wide_reference, tmp_path):
    import shutil

    from flq_audit.store import is_consolidated
    from tests._helpers.cli import invoke, squash

    store = tmp_path / "s.zarr"
    shutil.copytree(wide_reference, store)
    _as_left_by_a_writer_killed_before_finishing(store)
    writer = StepClaims(store, lease_s=30)
    assert writer.reopen(STEPS[1])  # a live writer (this process) rewrites that step
    try:
        result = invoke("show", store, "--repair")
    finally:
        writer.close()
    assert result.exit_code != 0
    assert f"step-{STEPS[1]}" in squash(result.output) and "Waitforthem" in squash(result.output)
    assert not is_consolidated(store)  # nothing was written
    writer.release(STEPS[1])
    assert invoke("show", store, "--repair").exit_code == 0 and is_consolidated(store)
