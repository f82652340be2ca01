"""Research checkpoint folders as published: init and final files, Lightning .ckpt files,
steps stored inside checkpoints, --name-pattern, and every file accounted for.

Each folder is written here with ``torch.save`` / safetensors; the expected steps come from
how the files were written, and each step's stored Gram is checked against the weights
written for it (WᵀW computed here in numpy).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from flq_audit.errors import StepSelectionError, StepSyntaxError
from flq_audit.sources.local import LocalFolderSource
from tests._helpers.cli import assert_says, describe, invoke, run_many, squash
from tests._helpers.runs import make_run, state_for

FIRST_LAYER = "layers.0"


def _weights(seed: int) -> dict[str, torch.Tensor]:
    """A distinct state dict of the small MLP for each seed."""
    return {k: v.detach().contiguous() for k, v in state_for(seed).items()}


def _expected_gram(seed: int) -> np.ndarray:
    w = _weights(seed)[f"{FIRST_LAYER}.weight"].double().numpy()
    return w.T @ w


def _folder(root: Path) -> Path:
    """``root`` with model_spec.json and probe.npz and no checkpoint yet."""
    return make_run(root, steps=())


def _course_folder(root: Path) -> tuple[Path, dict[int, int]]:
    """``epoch_init.pt`` + ``epoch_N.pt`` (nested, with an epoch key) + ``final.pth``.

    Returns the folder and ``{expected step: seed of the weights written}``.
    """
    run = _folder(root)
    torch.save({"model": _weights(100)}, run / "epoch_init.pt")
    for epoch in (1, 2, 3):
        torch.save({"model": _weights(100 + epoch), "epoch": epoch, "lr": 0.1},
                   run / f"epoch_{epoch}.pt")
    torch.save(_weights(200), run / "final.pth")
    return run, {0: 100, 1: 101, 2: 102, 3: 103, 4: 200}


def _lightning_ckpt(path: Path, seed: int, epoch: int, global_step: int) -> None:
    """A checkpoint laid out as PyTorch Lightning writes it."""
    state = {f"model.{k}": v for k, v in _weights(seed).items()}
    torch.save({
        "epoch": epoch, "global_step": global_step, "pytorch-lightning_version": "2.4.0",
        "state_dict": state, "loops": {"fit_loop": {"epoch_progress": {"current": epoch}}},
        "callbacks": {"ModelCheckpoint": {"best_model_score": torch.tensor(0.5)}},
        "optimizer_states": [{"state": {0: {"momentum_buffer": torch.zeros(3)}},
                              "param_groups": [{"lr": 0.1, "params": [0]}]}],
        "lr_schedulers": [], "hyper_parameters": {"lr": 0.1},
    }, path)


def _grams(store: Path) -> dict[int, np.ndarray]:
    from flq_audit import api

    ds = api.open_store(store, dask=False)
    out = {}
    for step in ds["step"].values[ds["done"].values.astype(bool)]:  # the audited steps
        gram = ds["gram"].sel(step=int(step), layer=FIRST_LAYER).values
        out[int(step)] = gram[:6, :6]
    return out


def _assert_grams(store: Path, seeds: dict[int, int]) -> None:
    grams = _grams(store)
    assert sorted(grams) == sorted(seeds)
    for step, seed in seeds.items():
        np.testing.assert_allclose(grams[step], _expected_gram(seed), rtol=1e-5, atol=1e-6,
                                   err_msg=f"step {step}")


# ------------------------------------------------------------------ listing (in-process)
def test_init_and_final_files_are_placed_without_renaming(tmp_path):
    run = _course_folder(tmp_path / "course")[0]

    source = LocalFolderSource(run)
    refs = source.list_refs()

    assert [(r.step, r.label) for r in refs] == [
        (0, "epoch_init.pt"), (1, "epoch_1.pt"), (2, "epoch_2.pt"), (3, "epoch_3.pt"),
        (4, "final.pth")]
    assert refs[0].extra["step_from"] == "init name: step 0"
    assert refs[-1].extra["step_from"] == "final name: after the last step"
    assert source.left_out() == []


def test_final_file_goes_to_the_step_stored_inside_it(tmp_path):
    run = _folder(tmp_path / "run")
    for epoch in (1, 2):
        torch.save({"model": _weights(epoch), "epoch": epoch}, run / f"epoch_{epoch}.pt")
    torch.save({"model": _weights(9), "epoch": 7}, run / "final.pt")

    refs = LocalFolderSource(run).list_refs()

    assert [(r.step, r.label) for r in refs] == [(1, "epoch_1.pt"), (2, "epoch_2.pt"),
                                                 (7, "final.pt")]
    assert refs[-1].extra["step_from"] == "'epoch' inside"


def test_final_twins_links_and_two_finals(tmp_path):
    run = _folder(tmp_path / "run")
    save_file(_weights(1), str(run / "step_10.safetensors"))
    save_file(_weights(2), str(run / "final.safetensors"))
    torch.save(_weights(2), run / "final.pt")
    (run / "latest.safetensors").symlink_to(run / "step_10.safetensors")

    source = LocalFolderSource(run)

    assert [(r.step, r.label) for r in source.list_refs()] == [
        (10, "step_10.safetensors"), (11, "final.safetensors")]
    assert [(e.name, e.reason) for e in source.left_out()] == [
        ("final.pt", "the same checkpoint as final.safetensors (safetensors is preferred)"),
        ("latest.safetensors", "the same file as step_10.safetensors")]
    torch.save(_weights(3), run / "last.pth")
    with pytest.raises(StepSelectionError, match="both name the final checkpoint") as info:
        LocalFolderSource(run).list_refs()
    assert "final.safetensors" in str(info.value) and "last.pth" in str(info.value)


def test_init_beside_a_step_zero_file_is_an_ambiguity_error(tmp_path):
    run = _folder(tmp_path / "run")
    torch.save(_weights(0), run / "init.pt")
    save_file(_weights(1), str(run / "step_0.safetensors"))
    save_file(_weights(2), str(run / "step_10.safetensors"))

    with pytest.raises(StepSelectionError, match="step 0 is ambiguous") as info:
        LocalFolderSource(run).list_refs()
    assert "init.pt" in str(info.value) and "step_0.safetensors" in str(info.value)
    assert info.value.exit_code == 4


def test_step_from_key_reads_pickles_and_safetensors_metadata(tmp_path):
    run = _folder(tmp_path / "run")
    torch.save({"model": _weights(1), "epoch": 5}, run / "snapshot_a.pt")
    save_file(_weights(2), str(run / "snapshot_b.safetensors"), metadata={"epoch": "12"})
    torch.save({"model": _weights(3)}, run / "snapshot_c.pt")  # no epoch inside, no step in name

    source = LocalFolderSource(run, step_from_key="epoch")
    refs = source.list_refs()

    assert [(r.step, r.label) for r in refs] == [(5, "snapshot_a.pt"),
                                                 (12, "snapshot_b.safetensors")]
    assert [(e.name, e.reason) for e in source.left_out()] == [
        ("snapshot_c.pt", "no step in its name and no 'epoch' inside")]
    with pytest.raises(Exception, match="no checkpoints found"):
        LocalFolderSource(run).list_refs()  # without the key no name gives a step


def test_name_pattern_decides_names_the_built_in_rules_cannot(tmp_path):
    run = _folder(tmp_path / "run")
    for epoch in (5, 10):
        torch.save(_weights(epoch), run / f"w_seed1_e{epoch:02d}.pt")
    torch.save(_weights(99), run / "w_seed2_e05.pt")

    with pytest.raises(StepSelectionError, match="cannot tell which number"):
        LocalFolderSource(run).list_refs()
    source = LocalFolderSource(run, name_pattern=r"w_seed1_e(?P<step>\d+)")
    assert [(r.step, r.label) for r in source.list_refs()] == [
        (5, "w_seed1_e05.pt"), (10, "w_seed1_e10.pt")]
    assert [e.name for e in source.left_out()] == ["w_seed2_e05.pt"]
    assert "does not match --name-pattern" in source.left_out()[0].reason
    with pytest.raises(StepSyntaxError, match="no named group 'step'"):
        LocalFolderSource(run, name_pattern=r"w_seed1_e\d+")


def test_lightning_last_ckpt_beside_its_step_is_left_out(tmp_path):
    run = _folder(tmp_path / "run")
    _lightning_ckpt(run / "epoch=0-step=50.ckpt", 1, 0, 50)
    _lightning_ckpt(run / "epoch=1-step=100.ckpt", 2, 1, 100)
    _lightning_ckpt(run / "last.ckpt", 2, 1, 100)

    source = LocalFolderSource(run)

    assert [(r.step, r.label) for r in source.list_refs()] == [
        (50, "epoch=0-step=50.ckpt"), (100, "epoch=1-step=100.ckpt")]
    (left,) = source.left_out()
    assert left.name == "last.ckpt" and "epoch=1-step=100.ckpt" in left.reason


def test_default_store_names_of_two_checkpoints_folders_differ(tmp_path, monkeypatch):
    from flq_audit.audit.plan import default_store

    monkeypatch.chdir(tmp_path)
    first = tmp_path / "a" / "DL_PA1_P2A" / "checkpoints"
    second = tmp_path / "b" / "grokking" / "checkpoints"
    first.mkdir(parents=True)
    second.mkdir(parents=True)
    nested = tmp_path / "mnist" / "lightning_logs" / "version_0" / "checkpoints"
    nested.mkdir(parents=True)

    assert default_store(first) == tmp_path / "DL_PA1_P2A-checkpoints.zarr"
    assert default_store(second) == tmp_path / "grokking-checkpoints.zarr"
    assert default_store(nested) == tmp_path / "mnist-lightning_logs-version_0-checkpoints.zarr"
    assert default_store(tmp_path / "a" / "DL_PA1_P2A") == tmp_path / "DL_PA1_P2A.zarr"
    assert default_store(Path("EleutherAI/pythia-70m")) == tmp_path / "pythia-70m.zarr"
    assert default_store(Path("org/checkpoints")) == tmp_path / "org-checkpoints.zarr"


def test_the_api_warns_once_and_an_old_default_store_still_resumes(tmp_path, monkeypatch):
    from flq_audit import api
    from flq_audit.errors import UnauditedFilesWarning

    monkeypatch.chdir(tmp_path)
    run, seeds = _course_folder(tmp_path / "DL" / "checkpoints")
    (run / "notes.txt").write_text("x")
    torch.save(_weights(7), run / "best.pt")
    old_default = tmp_path / "checkpoints.zarr"  # the name earlier versions chose

    with pytest.warns(UnauditedFilesWarning) as caught:
        api.audit(str(run), out=old_default, steps="4")

    messages = [str(w.message) for w in caught if w.category is UnauditedFilesWarning]
    assert len(messages) == 1
    assert "best.pt: no step in its name" in messages[0] and "notes.txt" in messages[0]
    _assert_grams(old_default, {4: seeds[4]})
    again = api.plan_audit(str(run), out=old_default, steps="4")
    assert (again.store_status, again.already_done) == ("resume", (4,))
    fresh = api.plan_audit(str(run))
    assert (fresh.store.path, fresh.store_status) == (tmp_path / "DL-checkpoints.zarr", "new")


# ------------------------------------------------------------------ the CLI (subprocesses)
def test_course_folder_audits_as_published(tmp_path):
    """init = step 0, final after the last epoch, nothing left out, no warning."""
    run, seeds = _course_folder(tmp_path / "DL_PA1_P2A" / "checkpoints")
    procs = run_many({
        "dry": (run, "--dry-run", "--json"),
        "audit": (run, "--out", tmp_path / "course.zarr", "-q"),
    })
    dry, audit = procs["dry"], procs["audit"]
    assert dry.returncode == 0, describe(dry)
    plan = json.loads(dry.stdout)
    assert plan["steps"] == [0, 1, 2, 3, 4]
    assert [c["label"] for c in plan["checkpoints"]] == [
        "epoch_init.pt", "epoch_1.pt", "epoch_2.pt", "epoch_3.pt", "final.pth"]
    assert plan["checkpoints"][0]["step_from"] == "init name: step 0"
    assert plan["not_audited"] == []
    assert Path(plan["store"]).name == "DL_PA1_P2A-checkpoints.zarr"
    assert audit.returncode == 0, describe(audit)
    assert "not audited" not in audit.stderr
    _assert_grams(tmp_path / "course.zarr", seeds)


def test_stray_files_are_listed_in_the_dry_run_and_warned_once(tmp_path):
    run, seeds = _course_folder(tmp_path / "run")
    (run / "notes.txt").write_text("lr 0.1, momentum 0.9")
    torch.save({"state": {}, "param_groups": []}, run / "optimizer.pt")
    torch.save(_weights(7), run / "best.pt")
    (run / "README.md").write_text("read on purpose: not listed")
    procs = run_many({
        "json": (run, "--dry-run", "--json"),
        "table": (run, "--dry-run"),
        "audit": (run, "--out", tmp_path / "S.zarr", "-q", "--steps", "0"),
    })
    for proc in procs.values():
        assert proc.returncode == 0, describe(proc)
    listed = {e["name"]: e for e in json.loads(procs["json"].stdout)["not_audited"]}
    assert sorted(listed) == ["best.pt", "notes.txt", "optimizer.pt"]
    assert listed["best.pt"]["reason"] == "no step in its name"
    assert "--name-pattern" in listed["best.pt"]["include"]
    assert listed["notes.txt"]["reason"] == "not a checkpoint file (.txt)"
    assert "optimizer" in listed["optimizer.pt"]["reason"]
    assert listed["optimizer.pt"]["include"] is None
    table = squash(procs["table"].stdout)
    assert squash("not audited") in table and "best.pt" in table and "notes.txt" in table
    stderr = procs["audit"].stderr
    assert stderr.count("not audited") == 1, stderr
    assert all(name in stderr for name in listed), stderr
    _assert_grams(tmp_path / "S.zarr", {0: seeds[0]})


def test_lightning_folder_audits_with_steps_from_global_step(tmp_path):
    """Names that do not carry the step (``val_acc=0.91``): the step is global_step."""
    run = _folder(tmp_path / "lightning")
    written = {(0, 50): 11, (1, 100): 12, (2, 150): 13}
    for (epoch, global_step), seed in written.items():
        _lightning_ckpt(run / f"model-epoch={epoch}-val_acc=0.{90 + epoch}.ckpt", seed, epoch,
                        global_step)
    _lightning_ckpt(run / "last.ckpt", 13, 2, 150)
    store = tmp_path / "L.zarr"
    (audit,) = run_many({"audit": (run, "--out", store, "--json")}).values()
    assert audit.returncode == 0, describe(audit)
    assert json.loads(audit.stdout)["written"] == [50, 100, 150]
    assert_says(audit.stderr, "1 file(s) in the source are not audited: last.ckpt: holds step "
                "150 (its 'global_step'), which model-epoch=2-val_acc=0.92.ckpt already gives")
    _assert_grams(store, {gs: seed for (_, gs), seed in written.items()})
    from flq_audit import api

    labels = api.open_store(store, dask=False)["label"].values.tolist()
    assert labels == [f"model-epoch={e}-val_acc=0.{90 + e}.ckpt" for e in (0, 1, 2)]


def test_step_from_key_and_name_pattern_on_the_command_line(tmp_path):
    keyed = _folder(tmp_path / "keyed")
    for epoch, name in ((3, "alpha"), (8, "beta")):
        torch.save({"model": _weights(epoch), "epoch": epoch}, keyed / f"{name}.pt")
    named = _folder(tmp_path / "named")
    for epoch in (5, 10):
        torch.save(_weights(epoch), named / f"w_seed1_e{epoch:02d}.pt")
    procs = run_many({
        "key": (keyed, "--step-from-key", "epoch", "--out", tmp_path / "K.zarr", "-q"),
        "pattern": (named, "--name-pattern", r"w_seed1_e(?P<step>\d+)", "--out",
                    tmp_path / "P.zarr", "--json"),
    })
    assert procs["key"].returncode == 0, describe(procs["key"])
    _assert_grams(tmp_path / "K.zarr", {3: 3, 8: 8})
    assert procs["pattern"].returncode == 0, describe(procs["pattern"])
    assert json.loads(procs["pattern"].stdout)["written"] == [5, 10]
    _assert_grams(tmp_path / "P.zarr", {5: 5, 10: 10})


@pytest.mark.parametrize(("setup", "args", "code", "needles"), [
    ("named", ("--name-pattern", r"w_(\d+)"), 2, ("no named group 'step'",)),
    ("named", ("--name-pattern", r"w_seed1_e(?P<step>\d+"), 2, ("not a valid regular",)),
    ("named", ("--revision-pattern", r"w_seed1_e(?P<step>\d+)"), 4,
     ("revision_pattern do not apply to local", "--name-pattern REGEX")),
    ("named", (), 4, ("cannot tell which number", "w_seed1_e05")),
    ("named", ("--step-from-key", "not a key"), 2, ("--step-from-key",)),
    ("init", (), 4, ("step 0 is ambiguous", "model_init.pt", "model_0.pt")),
])
def test_bad_names_and_options_are_clear_errors(tmp_path, setup, args, code, needles):
    run = _folder(tmp_path / "run")
    if setup == "named":
        torch.save(_weights(5), run / "w_seed1_e05.pt")
    else:
        torch.save(_weights(0), run / "model_init.pt")
        torch.save(_weights(1), run / "model_0.pt")

    result = invoke("audit", run, *args, "--dry-run")

    assert result.exit_code == code, describe(result)
    assert_says(result.stderr, *needles)
    assert result.exception is None or isinstance(result.exception, SystemExit), describe(result)


def test_final_file_keeps_its_own_step_key_when_the_names_say_nothing_of_units(tmp_path):
    """``model_N.pth`` names and a ``final.pth`` that stores ``epoch: 50000`` (the loop's
    counter): the file's own step wins over "after the last step", and the dry run shows the
    step and where it came from."""
    run = _folder(tmp_path / "run")
    for step in (49600, 49800):
        torch.save({"model": _weights(step)}, run / f"model_{step}.pth")
    torch.save({"model": _weights(7), "epoch": 50000, "lr": 0.1}, run / "final.pth")

    refs = LocalFolderSource(run).list_refs()

    assert [(r.step, r.label) for r in refs] == [
        (49600, "model_49600.pth"), (49800, "model_49800.pth"), (50000, "final.pth")]
    assert refs[-1].extra["step_from"] == "'epoch' inside"
    result = invoke("audit", run, "--trust-pickle", "--out", tmp_path / "s.zarr", "--dry-run")
    assert result.exit_code == 0, describe(result)
    row = next(line for line in result.stdout.splitlines() if "final.pth" in line)
    assert "50000" in row and "'epoch' inside" in row, result.stdout
    plan = json.loads(invoke("audit", run, "--trust-pickle", "--out", tmp_path / "s.zarr",
                             "--dry-run", "--json").stdout)
    final = plan["checkpoints"][-1]
    assert (final["step"], final["label"], final["step_from"]) == (
        50000, "final.pth", "'epoch' inside")
    assert not (tmp_path / "s.zarr").exists()


def test_final_file_whose_stored_count_is_not_after_the_last_step_goes_after_it(tmp_path):
    """``model_N`` names and a final file storing only ``epoch: 3`` (another unit): it goes
    after the last step, and its provenance says why the stored value was not taken."""
    run = _folder(tmp_path / "run")
    for step in (100, 200):
        torch.save({"model": _weights(step)}, run / f"model_{step}.pth")
    torch.save({"model": _weights(7), "epoch": 3}, run / "final.pth")

    refs = LocalFolderSource(run).list_refs()

    assert [(r.step, r.label) for r in refs][-1] == (201, "final.pth")
    assert refs[-1].extra["step_from"].startswith("final name: after the last step")
    assert "'epoch' inside is 3" in refs[-1].extra["step_from"]
