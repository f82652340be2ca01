"""Failures of the machine, not of the input: a full disk, a read-only store, a vanished file,
a network that does not answer. Each gives one line, a documented exit code, no traceback, and
a store that a rerun completes."""

from __future__ import annotations

import errno
import shutil
import subprocess

import pytest

from flq_audit import api
from flq_audit.errors import (
    CheckpointNotFoundError,
    NetworkError,
    SystemResourceError,
    from_os_error,
)
from tests._helpers.cli import cli_command, cli_env, describe, run_cli, squash
from tests._helpers.requires import missing
from tests._helpers.runs import make_run
from tests.faults._tree import assert_same_store, tree_hashes


@pytest.fixture
def small_disk(tmp_path):
    """A 400 KiB tmpfs (needs root); ``resize(size)`` and ``read_only()`` remount it."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if shutil.which("mount") is None:
        missing("no mount command for the small tmpfs")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        missing(f"cannot mount a small tmpfs here: {done.stderr.strip()}")

    def remount(options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(mount)], check=True)

    try:
        yield mount, remount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_a_full_disk_stops_cleanly_and_a_rerun_completes(tmp_path, small_disk):
    mount, remount = small_disk
    run = make_run(tmp_path / "run", n_samples=4000)
    source_before = tree_hashes(run)
    reference = tmp_path / "reference.zarr"
    assert run_cli(run, "--out", reference, "-q").returncode == 0
    store = mount / "S.zarr"
    full = run_cli(run, "--out", store)
    assert full.returncode == 6, describe(full)
    assert squash(full.stderr).startswith(squash("error: disk full (ENOSPC)")), full.stderr
    assert_in_one_line(full.stderr, "at step", "rerun the same command to resume")
    assert "Traceback" not in full.stderr
    remount("size=64m")
    again = run_cli(run, "--out", store, "-q")
    assert again.returncode == 0, describe(again)
    assert_same_store(store, reference)
    remount("ro")
    before = tree_hashes(store)
    for args in ((run, "--out", store), ("metrics", store)):
        refused = run_cli(*args)
        assert refused.returncode == 6, describe(refused)
        assert squash(refused.stderr).startswith(squash("error: read-only file system (EROFS)"))
        assert "Traceback" not in refused.stderr
    assert tree_hashes(store) == before
    assert tree_hashes(run) == source_before


def assert_in_one_line(text: str, *needles: str) -> None:
    flat = " ".join(text.split())
    for needle in needles:
        assert needle in flat, text


def test_a_checkpoint_that_vanishes_mid_audit_stops_with_exit_3_and_resumes(tmp_path):
    run = make_run(tmp_path / "run")
    store = tmp_path / "S.zarr"
    moved = tmp_path / "step_20.safetensors"

    class MoveLastCheckpoint:
        def start(self, total_steps: int, batches_per_step: int) -> None: ...
        def batch_done(self) -> None: ...
        def step_finished(self, ref, error) -> None: ...

        def step_started(self, ref) -> None:
            if ref.step == 0:  # before step 20 is fetched, prefetched or not
                shutil.move(run / "step_20.safetensors", moved)

    with pytest.raises(CheckpointNotFoundError, match=r"step 20 .* disappeared") as caught:
        api.audit(str(run), out=store, progress=MoveLastCheckpoint())
    assert caught.value.exit_code == 3 and caught.value.step == 20
    shutil.move(moved, run / "step_20.safetensors")
    result = api.audit(str(run), out=store)
    assert result.skipped == [0, 10] and result.written == [20]


@pytest.mark.slow
def test_a_hub_that_does_not_answer_is_a_network_error_exit_7():
    env = cli_env(HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_OFFLINE="0")
    done = subprocess.run(cli_command("hf://org/name", "--dry-run"), env=env,
                          capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 7, describe(done)
    lines = done.stderr.splitlines()
    assert lines[0] == "looking up Hub repository hf://org/name on http://127.0.0.1:9"
    assert_in_one_line(done.stderr, "error: the Hub at http://127.0.0.1:9 did not answer")
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(("code", "kind", "text"), [
    (errno.ENOSPC, SystemResourceError, "disk full (ENOSPC)"),
    (errno.EDQUOT, SystemResourceError, "disk quota exceeded (EDQUOT)"),
    (errno.EACCES, SystemResourceError, "permission denied (EACCES)"),
    (errno.EROFS, SystemResourceError, "read-only file system (EROFS)"),
    (errno.EMFILE, SystemResourceError, "too many open files (EMFILE)"),
    (errno.ENOENT, CheckpointNotFoundError, "file vanished or missing"),
])
def test_each_os_error_has_one_line_and_its_exit_code(code, kind, text):
    err = from_os_error(OSError(code, "x", "/data/S.zarr/gram/c/0"), step=10)
    assert type(err) is kind
    assert err.exit_code == {SystemResourceError: 6, CheckpointNotFoundError: 3}[kind]
    assert str(err).startswith(f"{text} on '/data/S.zarr/gram/c/0' at step 10")
    assert "\n" not in str(err) and "resume" in str(err)


def test_a_dropped_connection_is_a_network_error():
    err = from_os_error(ConnectionResetError(errno.ECONNRESET, "reset by peer"), step=3)
    assert isinstance(err, NetworkError) and err.exit_code == 7
    assert str(err).startswith("network failure at step 3: ConnectionResetError")
