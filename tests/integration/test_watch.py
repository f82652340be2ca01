"""``flq-audit SOURCE --watch`` on a folder that a separate process fills checkpoint by
checkpoint: every step audited once, none read half-written, ``--until`` ends it, and a
watch stopped by SIGINT is finished by the next one."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import xarray as xr

from flq_audit import api
from flq_audit.store import StepClaims, StoreLocation
from tests._helpers.cli import describe, popen_cli, read_done
from tests._helpers.runs import state_for
from tests._helpers.stores import assert_same_store

ROOT = Path(__file__).resolve().parents[2]
#: A guard against a hung watch, never a timing assert.
DEADLINE_S = 150

#: The training job: checkpoint-N/ folders as transformers' Trainer writes them. Each phase
#: after the first waits for a go-file the test creates once the watch has seen the previous
#: phase, so the half-written states are seen by the watch for certain.
WRITER = r'''
import sys, time
from pathlib import Path
from tests._helpers.hub import safetensors_bytes, sharded
from tests._helpers.runs import state_for

root, control, phases = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]

def state(step):
    return {k: v.detach().contiguous() for k, v in state_for(step).items()}

def folder(step):
    d = root / f"checkpoint-{step}"
    d.mkdir()
    (d / "trainer_state.json").write_text("{}")
    return d

def wait_for(name):
    while not (control / name).exists():
        time.sleep(0.05)

def whole(step):
    (folder(step) / "model.safetensors").write_bytes(safetensors_bytes(state(step)))

if phases == "sigint":
    for step in (0, 10, 20):
        whole(step)
    sys.exit(0)
whole(0)
whole(10)
wait_for("go-1")
shards = sharded(state(20), 2)
names = sorted(n for n in shards if n.endswith(".safetensors"))
d20 = folder(20)
(d20 / names[0]).write_bytes(shards[names[0]])   # one shard of two, no index yet
data = safetensors_bytes(state(30))
with open(folder(30) / "model.safetensors", "wb") as fh:   # half of its bytes
    fh.write(data[: len(data) // 2])
wait_for("go-2")
(d20 / names[1]).write_bytes(shards[names[1]])
(d20 / "model.safetensors.index.json").write_bytes(shards["model.safetensors.index.json"])
with open(root / "checkpoint-30" / "model.safetensors", "ab") as fh:
    fh.write(data[len(data) // 2:])
whole(40)
'''


def _writer(run: Path, control: Path, phases: str = "grow") -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(run), str(control), phases],
                            cwd=ROOT)


class _Lines:
    """The watch's stderr, collected line by line as it comes."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert proc.stderr is not None
        self._thread = threading.Thread(target=self._read, args=(proc.stderr,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)


def _wait(condition: Callable[[], bool], what: str, proc: subprocess.Popen[str]) -> None:
    end = time.monotonic() + DEADLINE_S
    while not condition():
        assert proc.poll() is None, f"the watch ended while waiting for {what}"
        assert time.monotonic() < end, f"gave up waiting for {what}"
        time.sleep(0.05)


def _done_steps(store: Path) -> list[int]:
    done = read_done(store)
    if done is None:
        return []
    import zarr

    steps = np.asarray(zarr.open_group(str(store), mode="r")["step"][:])
    return [int(s) for s in steps[: len(done)][done]]


def _watch(run: Path, store: Path, *extra: str) -> subprocess.Popen[str]:
    return popen_cli(run, "--watch", "--poll", "0.2", "--weights-only", "--out", store, *extra)


def test_watch_audits_each_checkpoint_once_and_never_half_written(tmp_path):
    run, control, store = tmp_path / "run", tmp_path / "control", tmp_path / "s.zarr"
    run.mkdir()
    control.mkdir()
    writer = _writer(run, control)
    proc = _watch(run, store, "--until", "40")
    lines = _Lines(proc)
    try:
        _wait(lambda: _done_steps(store) == [0, 10], "steps 0 and 10", proc)
        (control / "go-1").touch()
        _wait(lambda: "checkpoint-20 still being written" in lines.text()
              and "checkpoint-30 still being written" in lines.text(), "the waits", proc)
        assert 20 not in _done_steps(store) and 30 not in _done_steps(store)
        (control / "go-2").touch()
        proc.wait(timeout=DEADLINE_S)
    finally:
        for p in (proc, writer):
            if p.poll() is None:
                p.kill()
    assert writer.wait() == 0
    out = proc.stdout.read() if proc.stdout else ""
    assert proc.returncode == 0, describe(subprocess.CompletedProcess(proc.args, proc.returncode,
                                                                     out, lines.text()))
    assert "shard index not written yet" in lines.text()
    ds = xr.open_zarr(store)
    assert ds["step"].values.tolist() == [0, 10, 20, 30, 40]
    assert ds["done"].values.all()
    claims = StepClaims(StoreLocation.parse(store))
    assert [claims.read(s).claims for s in (0, 10, 20, 30, 40)] == [1] * 5
    claims.close()
    for step in (0, 10, 20, 30, 40):  # the Grams of the finished files, WᵀW computed here
        state = state_for(step)
        for layer in ds["layer"].values.tolist():
            w = state[f"{layer}.weight"].double().numpy()
            gram = ds.flq.gram(step, layer).values
            np.testing.assert_allclose(gram, w.T @ w, rtol=1e-5, atol=1e-6)


def test_sigint_mid_watch_then_a_rerun_finishes_the_store(tmp_path):
    run, control, store = tmp_path / "run", tmp_path / "control", tmp_path / "s.zarr"
    run.mkdir()
    control.mkdir()
    assert _writer(run, control, "sigint").wait() == 0
    proc = _watch(run, store)
    lines = _Lines(proc)
    try:
        _wait(lambda: bool(_done_steps(store)), "a first step", proc)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=DEADLINE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, lines.text()
    assert "rerun the same command to resume" in lines.text()
    (run / "checkpoint-30").mkdir()  # the run went on meanwhile
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state_for(30).items()},
              str(run / "checkpoint-30" / "model.safetensors"))
    again = _watch(run, store, "--until", "30")
    out, err = again.communicate(timeout=DEADLINE_S)
    assert again.returncode == 0, err
    assert "step 30 reached" in out
    reference = tmp_path / "one-shot.zarr"
    assert not api.audit(str(run), weights_only=True, out=reference).failed
    assert_same_store(store, reference)


def test_sigterm_while_waiting_exits_143_and_keeps_the_store(tmp_path):
    run, control, store = tmp_path / "run", tmp_path / "control", tmp_path / "s.zarr"
    run.mkdir()
    control.mkdir()
    assert _writer(run, control, "sigint").wait() == 0
    proc = _watch(run, store, "--until", "1000")
    lines = _Lines(proc)
    try:
        _wait(lambda: "3 steps done; until step 1000)" in lines.text(), "a wait", proc)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=DEADLINE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, lines.text()
    assert "rerun the same command to resume" in lines.text()
    assert _done_steps(store) == [0, 10, 20]


def test_metrics_after_each_round_equal_a_one_shot_computation(tmp_path):
    """The watch's sleep is where the training job writes its next checkpoint."""
    from flq_audit.api import watch
    from flq_audit.audit.watch import WatchOptions
    from flq_audit.options import RunOptions
    from flq_audit.store import open_dataset
    from tests._helpers.runs import make_run

    run = make_run(tmp_path / "run", (0, 10))
    later = iter([20, 30])

    def training(seconds: float) -> None:
        step = next(later, None)
        if step is not None:
            make_run(run, (step,))

    store, options = tmp_path / "s.zarr", WatchOptions(poll=0.2, until=30, metrics=("tl",))
    result = watch(str(run), options=options, run=RunOptions(batch_size=20), sleep=training,
                   out=store)
    assert sorted(result.written) == [0, 10, 20, 30] and not result.failed
    reference = tmp_path / "one-shot.zarr"
    api.audit(str(run), out=reference, run=RunOptions(batch_size=20))
    want = api.compute_metrics(reference, metrics=["tl"])["target_linearity"]
    ds = open_dataset(store)
    assert ds.flq.summary().stale_metrics == []
    np.testing.assert_array_equal(ds.flq.metric("target_linearity").values, want.values)


def test_watch_options_belong_to_watch(tmp_path):
    from tests._helpers.cli import invoke
    from tests._helpers.runs import make_run

    run = make_run(tmp_path / "run", (0,))
    for args, needle in ((("--poll", "1"), "apply only with --watch"),
                         (("--until", "5"), "apply only with --watch"),
                         (("--watch", "--dry-run"), "--dry-run"),
                         (("--watch", "--steps", "first"), "audits every checkpoint")):
        result = invoke("audit", run, "--out", tmp_path / "s.zarr", *args)
        assert result.exit_code == 2, describe(result)
        assert needle in result.output
    assert not (tmp_path / "s.zarr").exists()


def test_watch_a_hub_repo_audits_a_branch_added_between_polls(tmp_path):
    import os

    from tests._helpers.hub import build_git_repo, olah_hub, rev_parse, safetensors_bytes, tiny_state

    def revision(seed: int) -> dict[str, bytes]:
        return {"model.safetensors": safetensors_bytes(tiny_state(seed))}

    branches = {"main": revision(10), "step0": revision(0), "step10": revision(10)}
    with olah_hub(tmp_path / "olah", {"org/growing": branches}) as (endpoint, _, server):
        home, store = tmp_path / "home", tmp_path / "s.zarr"
        env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HOME": str(home),
               "HF_HUB_CACHE": str(home / "hub"), "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"}
        proc = popen_cli("org/growing", "--watch", "--poll", "0.2", "--until", "20",
                         "--weights-only", "--out", store, env=env)
        lines = _Lines(proc)
        try:
            _wait(lambda: _done_steps(store) == [0, 10], "steps 0 and 10", proc)
            repo = server.repo_path("org/growing")
            build_git_repo(repo, {"step20": revision(20)})  # the uploader pushes a branch
            proc.wait(timeout=DEADLINE_S)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, lines.text()
        ds = xr.open_zarr(store)
        assert ds["step"].values.tolist() == [0, 10, 20] and bool(ds["done"].all())
        assert str(ds["commit"].sel(step=20).values) == rev_parse(repo, "step20")
        w = tiny_state(20)["layers.0.weight"].double().numpy()
        gram = ds.flq.gram(20, "layers.0").values
        np.testing.assert_allclose(gram, w.T @ w, rtol=1e-5, atol=1e-6)


def test_a_half_written_shard_index_is_waited_out(tmp_path):
    """A listing that fails on a half-written ``model.safetensors.index.json`` does not stop
    the watch: it waits, says why, and audits the checkpoint once the index is whole."""
    from contextlib import nullcontext

    from flq_audit.api import watch
    from flq_audit.audit.watch import WatchOptions
    from tests._helpers.hub import safetensors_bytes, sharded

    run = tmp_path / "run"
    (run / "checkpoint-0").mkdir(parents=True)
    (run / "checkpoint-0" / "model.safetensors").write_bytes(safetensors_bytes(state_for(0)))
    files = sharded({k: v.contiguous() for k, v in state_for(10).items()}, 2)
    (run / "checkpoint-10").mkdir()
    for name, data in files.items():
        cut = len(data) // 2 if name.endswith(".json") else len(data)
        (run / "checkpoint-10" / name).write_bytes(data[:cut])
    said: list[str] = []

    class Reporter:
        def audit_round(self):
            return nullcontext()

        def waiting(self, message: str) -> None:
            said.append(message)

        def round_done(self, result) -> None: ...

    def training(seconds: float) -> None:  # the trainer finishes writing the index
        index = run / "checkpoint-10" / "model.safetensors.index.json"
        index.write_bytes(files["model.safetensors.index.json"])

    result = watch(str(run), options=WatchOptions(poll=0.2, until=10), reporter=Reporter(),
                   sleep=training, weights_only=True, out=tmp_path / "s.zarr")
    assert sorted(result.written) == [0, 10] and not result.failed
    assert any("listing:" in m and "index" in m for m in said), said
