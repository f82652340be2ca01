"""The store's safety rules: resuming from anywhere, a kernel lock, odd file names, odd sources."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest
import xarray as xr

from flq_audit.errors import StoreLockedError
from flq_audit.store import lock_path, store_lock
from tests._helpers.cli import assert_says, cli_env, describe, invoke, squash
from tests._helpers.runs import make_run
from tests.faults._tree import tree_hashes


# ------------------------------------------------------------------ fingerprints
def test_resume_from_another_directory_and_with_an_absolute_source(tmp_path, monkeypatch):
    make_run(tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    first = invoke("audit", "run", "--out", "S.zarr", "--json")
    assert first.exit_code == 0, describe(first)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for source in (str(tmp_path / "run"), "../run"):
        again = invoke("audit", source, "--out", tmp_path / "S.zarr", "--json")
        assert again.exit_code == 0, describe(again)
        assert json.loads(again.stdout)["skipped"] == [0, 10, 20]
    monkeypatch.chdir(tmp_path / "run")
    again = invoke("audit", ".", "--out", "../S.zarr", "--model", "model_spec.json", "--json")
    assert again.exit_code == 0, describe(again)


def test_a_different_audit_lists_each_field_in_full_and_suggests_a_new_out(tmp_path):
    from flq_audit.probes import load_probe

    first, second = make_run(tmp_path / "a"), make_run(tmp_path / "b", seed=1)
    store = tmp_path / "S.zarr"
    assert invoke("audit", first, "--out", store, "-q").exit_code == 0
    before = tree_hashes(store)
    result = invoke("audit", second, "--out", store, "--layers", "layers.0")
    assert result.exit_code == 4, describe(result)
    old = load_probe(first / "probe.npz").fingerprint
    new = load_probe(second / "probe.npz").fingerprint
    assert_says(result.stderr, f"probe_fingerprint: stored '{old}', now '{new}'",
                'capture_config.layers: stored ["layers.0", "layers.1", "layers.2"], '
                'now ["layers.0"]', f"source: stored '{first.resolve()}'")
    assert "..." not in result.stderr
    flat = squash(result.stderr)
    assert flat.index(squash("Choose a new --out")) < flat.index("--overwrite"), result.stderr
    assert tree_hashes(store) == before


# ------------------------------------------------------------------ the kernel lock
def _hold_and_log(store: str, log: str, rounds: int, barrier) -> int:
    barrier.wait()
    held = 0
    while held < rounds:
        try:
            with store_lock(store):
                with open(log, "a") as handle:
                    handle.write(f"{os.getpid()} in\n")
                    handle.flush()
                    time.sleep(0.001)
                    handle.write(f"{os.getpid()} out\n")
                held += 1
        except StoreLockedError:
            time.sleep(0.0005)
    return held


def _worker(store: str, log: str, rounds: int, barrier) -> None:
    _hold_and_log(store, log, rounds, barrier)


def test_many_processes_racing_never_hold_the_lock_together(tmp_path):
    store, log = str(tmp_path / "S.zarr"), str(tmp_path / "log.txt")
    ctx = multiprocessing.get_context("fork")
    n_procs, rounds = 6, 25
    barrier = ctx.Barrier(n_procs)
    procs = [ctx.Process(target=_worker, args=(store, log, rounds, barrier))
             for _ in range(n_procs)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
        assert proc.exitcode == 0
    lines = (tmp_path / "log.txt").read_text().splitlines()
    assert len(lines) == 2 * n_procs * rounds
    for enter, leave in zip(lines[::2], lines[1::2], strict=True):
        pid = enter.split()[0]
        assert (enter, leave) == (f"{pid} in", f"{pid} out"), "two holders overlapped"
    assert not lock_path(store).exists()


def test_a_held_lock_refuses_and_a_killed_holders_lock_is_free_at_once(tmp_path):
    store = tmp_path / "S.zarr"
    code = ("import sys, time\nfrom flq_audit.store._lock import store_lock\n"
            "with store_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(store)], stdout=subprocess.PIPE,
                              text=True, env=cli_env(PYTHONPATH=os.getcwd()))
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreLockedError, match="being written by another process"), \
                store_lock(store):
            pass
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        assert not lock_path(store).exists()  # no lock file outlives its process
        assert not list(tmp_path.iterdir())  # nothing at all beside the store
        with store_lock(store):  # no wait, no takeover, no removal by hand
            pass
    finally:
        holder.kill()
        holder.wait()


# ------------------------------------------------------------------ odd names, odd sources
def test_a_non_utf8_checkpoint_name_is_audited_and_stored_escaped(tmp_path):
    run = make_run(tmp_path / "run")
    os.rename(os.fsencode(run / "step_10.safetensors"),
              os.fsencode(run) + b"/step_10_\xff\xfe.safetensors")
    store = tmp_path / "S.zarr"
    result = invoke("audit", run, "--out", store, "--json")
    assert result.exit_code == 0, describe(result)
    with xr.open_zarr(str(store)) as ds:
        assert ds["done"].values.tolist() == [True, True, True]
        assert str(ds["label"].values[1]) == "step_10_\\xff\\xfe.safetensors"
    assert invoke("show", store).exit_code == 0


def test_a_mistyped_local_path_is_never_sent_to_the_hub(tmp_path, monkeypatch):
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    for source in ("runs/mlpp", "./org/name", "~/no-such-run-here/x"):
        result = invoke("audit", source, "--dry-run")
        assert result.exit_code == 3, describe(result)
        assert_says(result.stderr, "no such folder", "not looked up on the Hub")
        assert "Hub repository" not in result.stderr.split("\n")[0]


def test_version_needs_no_torch_and_debug_shows_the_traceback(tmp_path):
    probe = ("import sys, runpy\nsys.argv = ['flq-audit', '--version']\n"
             "from flq_audit.cli import main\nmain()\nprint('torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env=cli_env(PYTHONPATH=os.getcwd()), timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    from flq_audit import __version__

    assert done.stdout.splitlines() == [f"flq-audit {__version__}", "False"]
    plain = subprocess.run([sys.executable, "-m", "flq_audit", "show", str(tmp_path)],
                           capture_output=True, text=True, env=cli_env(), timeout=120)
    debug = subprocess.run([sys.executable, "-m", "flq_audit", "--debug", "show", str(tmp_path)],
                           capture_output=True, text=True, env=cli_env(), timeout=120)
    assert plain.returncode == 4 and "Traceback" not in plain.stderr, plain.stderr
    assert debug.returncode != 0 and "Traceback (most recent call last)" in debug.stderr


def test_a_store_cut_short_in_place_is_rebuilt_not_refused(tmp_path):
    import zarr

    run = make_run(tmp_path / "run")
    store = tmp_path / "S.zarr"
    group = zarr.open_group(str(store), mode="w", zarr_format=3)  # as an older version left it
    group.attrs.update({"Conventions": "CF-1.8 flq-audit-1", "source": str(run)})
    group.create_array("gram", shape=(3,), dtype="f4")
    result = invoke("audit", run, "--out", store, "--json")
    assert result.exit_code == 0, describe(result)
    assert json.loads(result.stdout)["written"] == [0, 10, 20]
    with xr.open_zarr(str(store)) as ds:
        assert ds["done"].values.tolist() == [True, True, True]
