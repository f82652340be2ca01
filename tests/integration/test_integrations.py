"""Auditing from inside training: real trainers, real worker processes, real stores.

Each store a callback (or Recorder) writes is compared, variable by variable and bit for
bit, with what ``flq-audit FOLDER --steps all`` writes afterwards with the same options; the
trainer's weights and RNG states are compared with the same run without the callback.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from flq_audit.errors import FlqAuditError, FlqAuditWarning, ProbeError
from flq_audit.integrations import Recorder
from flq_audit.models import build_from_spec
from tests._helpers.cli import describe, run_cli
from tests._helpers.runs import SMALL_SPEC
from tests._helpers.stores import assert_same_store
from tests._helpers.trainers import rng_states, train_hf, train_lightning, write_inputs

pytestmark = pytest.mark.slow


def _post_hoc(folder: Path, spec: Path, probe: Path, out: Path) -> Path:
    """The reference: the CLI audits the finished folder in one go."""
    result = run_cli(folder, "--model", spec, "--probe", probe, "--steps", "all", "--out", out)
    assert result.returncode == 0, describe(result)
    return out


def _done_steps(store: Path) -> list[int]:
    import zarr

    group = zarr.open_group(str(store), mode="r")
    return [int(s) for s, done in zip(group["step"][:], group["done"][:], strict=True) if done]


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_importing_the_integrations_loads_no_trainer_and_no_torch():
    """Not even its callback modules (pytest imports them to collect doctests): the trainer
    packages load when a callback class is first used."""
    code = ("import sys, flq_audit, flq_audit.integrations, flq_audit.integrations.hf, "
            "flq_audit.integrations.lightning; "
            "print(sorted(m for m in ('torch', 'transformers', 'pytorch_lightning', 'lightning') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_recorder_in_a_plain_loop_writes_the_post_hoc_store(tmp_path):
    spec, probe = write_inputs(tmp_path)
    torch.manual_seed(0)
    net = build_from_spec(SMALL_SPEC)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    store, folder = tmp_path / "live.zarr", tmp_path / "ckpts"
    with Recorder(store, folder, model=str(spec), probe=str(probe)) as recorder:
        for step in range(7):
            if step % 3 == 0:
                before = rng_states(), {k: v.clone() for k, v in net.state_dict().items()}
                grads = [None if p.grad is None else p.grad.clone() for p in net.parameters()]
                recorder.save(step, net)
                assert rng_states() == before[0]
                assert all(torch.equal(v, before[1][k]) for k, v in net.state_dict().items())
                assert all(p.requires_grad for p in net.parameters())
                assert all((g is None and p.grad is None) or torch.equal(g, p.grad)
                           for g, p in zip(grads, net.parameters(), strict=True))
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            optimizer.step()
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-0", "checkpoint-3",
                                                        "checkpoint-6"]
    assert recorder.worker.audited == [0, 3, 6]
    assert _done_steps(store) == [0, 3, 6]
    assert_same_store(store, _post_hoc(folder, spec, probe, tmp_path / "post.zarr"))


def test_an_inline_recorder_puts_the_rng_and_threads_back(tmp_path):
    spec, probe = write_inputs(tmp_path)
    torch.manual_seed(3)
    net = build_from_spec(SMALL_SPEC)
    threads = torch.get_num_threads()
    recorder = Recorder(tmp_path / "inline.zarr", tmp_path / "ckpts", model=str(spec),
                        probe=str(probe), inline=True)
    before = rng_states()
    recorder.save(0, net)  # the audit runs here: it builds and replays a model
    assert rng_states() == before
    assert torch.get_num_threads() == threads and torch.is_grad_enabled()
    recorder.close()
    assert _done_steps(tmp_path / "inline.zarr") == [0]


def test_a_step_saved_twice_is_refused_and_its_folder_kept(tmp_path):
    spec, probe = write_inputs(tmp_path)
    net = build_from_spec(SMALL_SPEC)
    recorder = Recorder(tmp_path / "s.zarr", tmp_path / "ckpts", model=str(spec),
                        probe=str(probe), inline=True)
    first = recorder.save(5, net)
    written = (first / "model.safetensors").read_bytes()
    with pytest.raises(FlqAuditError, match=r"step 5: .*checkpoint-5.* already exists"):
        recorder.save(5, net)
    assert (first / "model.safetensors").read_bytes() == written
    recorder.close()


def test_a_failing_step_audit_is_raised_at_close_naming_the_step(tmp_path):
    spec, _ = write_inputs(tmp_path)
    bad_probe = tmp_path / "bad.npz"  # 5 features: the MLP takes 6
    np.savez(bad_probe, inputs=np.zeros((4, 5), np.float32), targets=np.zeros(4, np.int64))
    net = build_from_spec(SMALL_SPEC)
    recorder = Recorder(tmp_path / "s.zarr", tmp_path / "ckpts", model=str(spec),
                        probe=str(bad_probe))
    recorder.save(4, net)  # the hand-over succeeds: the audit runs beside
    with pytest.raises(ProbeError, match=r"failed at step\(s\) 4") as info:
        recorder.close()
    assert info.value.step == 4 and str(tmp_path / "ckpts") in str(info.value)
    warned = Recorder(tmp_path / "w.zarr", tmp_path / "w", model=str(spec),
                      probe=str(bad_probe), on_error="warn")
    warned.save(1, net)
    with pytest.warns(FlqAuditWarning, match=r"step 1 \("):
        warned.close()


def test_the_transformers_trainer_callback_writes_the_post_hoc_store(tmp_path):
    from flq_audit.integrations import FlqAuditCallback

    spec, probe = write_inputs(tmp_path)
    plain = train_hf(tmp_path / "plain", [])
    plain_rng = rng_states()
    callback = FlqAuditCallback(tmp_path / "hf.zarr", model=str(spec), probe=str(probe))
    audited = train_hf(tmp_path / "out", [callback])
    assert rng_states() == plain_rng
    assert _same_weights(audited, plain) and audited.device == plain.device
    assert _done_steps(tmp_path / "hf.zarr") == [2, 4, 6]
    assert_same_store(tmp_path / "hf.zarr",
                      _post_hoc(tmp_path / "out", spec, probe, tmp_path / "post.zarr"))


def test_the_lightning_callback_writes_the_post_hoc_store(tmp_path):
    from flq_audit.integrations import FlqAuditLightningCallback

    spec, probe = write_inputs(tmp_path)
    plain = train_lightning([], max_steps=16)
    plain_rng = rng_states()
    callback = FlqAuditLightningCallback(tmp_path / "pl.zarr", tmp_path / "ckpts",
                                         every_n_steps=5, model=str(spec), probe=str(probe))
    by_epoch = FlqAuditLightningCallback(  # 8 batches an epoch; the net only, from step 0
        tmp_path / "epochs.zarr", tmp_path / "epochs", every_n_epochs=1, save_initial=True,
        attribute="net", model=str(spec), probe=str(probe))
    audited = train_lightning([callback, by_epoch], max_steps=16)
    assert rng_states() == plain_rng
    assert _same_weights(audited, plain) and audited.device == plain.device
    assert callback.saved == [5, 10, 15] and by_epoch.saved == [0, 8, 16]
    assert _done_steps(tmp_path / "pl.zarr") == callback.saved
    assert _done_steps(tmp_path / "epochs.zarr") == [0, 8, 16]
    assert_same_store(tmp_path / "pl.zarr",
                      _post_hoc(tmp_path / "ckpts", spec, probe, tmp_path / "post.zarr"))
    again = FlqAuditLightningCallback(tmp_path / "pl.zarr", tmp_path / "ckpts", every_n_steps=5,
                                      model=str(spec), probe=str(probe))
    with pytest.warns(FlqAuditWarning, match=r"step 5: .*checkpoint-5.* exists already"):
        train_lightning([again], max_steps=16)  # the same steps again: kept, not rewritten
    assert again.saved == [5, 10, 15]
    assert_same_store(tmp_path / "pl.zarr", tmp_path / "post.zarr")


def test_a_worker_that_dies_is_reported_with_the_steps_it_did_not_audit(tmp_path):
    spec, probe = write_inputs(tmp_path)
    net = build_from_spec(SMALL_SPEC)
    recorder = Recorder(tmp_path / "s.zarr", tmp_path / "ckpts", model=str(spec),
                        probe=str(probe))
    recorder.save(0, net)
    recorder.wait()
    assert recorder.worker.audited == [0]
    proc = recorder.worker._proc
    assert proc is not None
    import psutil

    assert psutil.Process(proc.pid).nice() == min(19, os.nice(0) + 10)  # training goes first
    proc.kill()
    proc.wait()
    with pytest.warns(FlqAuditWarning, match="exited"):
        recorder.save(1, net)
        recorder.save(2, net)
    with pytest.raises(FlqAuditError, match=r"failed at step\(s\) 1, 2") as info:
        recorder.close()
    assert "exited (status -9) before auditing" in str(info.value)
    assert sorted(p.name for p in (tmp_path / "ckpts").iterdir()) == [
        "checkpoint-0", "checkpoint-1", "checkpoint-2"]


@pytest.mark.gpu
def test_saving_a_cuda_model_leaves_it_and_the_cuda_rng_as_they_were(tmp_path):
    from flq_audit.options import RunOptions

    spec, probe = write_inputs(tmp_path)
    net = build_from_spec(SMALL_SPEC).cuda()
    cuda_rng = torch.cuda.get_rng_state_all()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    recorder = Recorder(tmp_path / "s.zarr", tmp_path / "ckpts", model=str(spec),
                        probe=str(probe), inline=True, run=RunOptions(device="cuda"))
    recorder.save(0, net)  # inline: the audit replays on this process's GPU
    recorder.close()
    assert all(p.is_cuda for p in net.parameters())
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert all(torch.equal(a, b) for a, b in
               zip(torch.cuda.get_rng_state_all(), cuda_rng, strict=True))
    assert _done_steps(tmp_path / "s.zarr") == [0]


def test_the_worker_finishes_the_handed_steps_when_training_is_killed(tmp_path):
    import psutil

    spec, probe = write_inputs(tmp_path)
    script = tmp_path / "train.py"
    script.write_text(
        "import os, signal, sys\n"
        "from flq_audit.integrations import Recorder\n"
        "from flq_audit.models import build_from_spec, load_spec\n"
        f"recorder = Recorder({str(tmp_path / 's.zarr')!r}, {str(tmp_path / 'ckpts')!r}, "
        f"model={str(spec)!r}, probe={str(probe)!r})\n"
        f"recorder.save(0, build_from_spec(load_spec({str(spec)!r})))\n"
        "print(recorder.worker._proc.pid, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == -9, describe(result)
    worker = int(result.stdout.split()[0])
    with contextlib.suppress(psutil.NoSuchProcess):  # not our child: no exit status to read
        psutil.Process(worker).wait(timeout=120)
    assert _done_steps(tmp_path / "s.zarr") == [0]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({}, "one of every_n_steps and every_n_epochs"),
    ({"every_n_steps": 2, "every_n_epochs": 1}, "one of every_n_steps and every_n_epochs"),
    ({"every_n_steps": 0}, r"every_n_steps must be an integer >= 1; got 0"),
    ({"every_n_epochs": 1.5}, r"every_n_epochs must be an integer >= 1; got 1.5"),
])
def test_the_lightning_cadence_is_checked_when_the_callback_is_made(tmp_path, kwargs, message):
    from flq_audit.errors import OptionError
    from flq_audit.integrations import FlqAuditLightningCallback

    with pytest.raises(OptionError, match=message):
        FlqAuditLightningCallback(tmp_path / "s.zarr", tmp_path / "ckpts", **kwargs)
    assert not (tmp_path / "ckpts").exists()
