"""LocalFolderSource on real checkpoint folders: every layout it documents, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from flq_audit.errors import CheckpointNotFoundError, IntegrityError, StepSelectionError
from flq_audit.sources.local import LocalFolderSource
from flq_audit.weights import load_state_dict
from tests._helpers.runs import state_for


def _state(step: int = 0) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in state_for(step).items()}


def _write(path: Path, state: dict[str, torch.Tensor]) -> Path:
    """Safetensors for ``.safetensors``, a torch pickle for everything else."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ------------------------------------------------------------------ one file per step
@pytest.mark.parametrize(
    ("name", "step", "fmt"),
    [
        ("step_100.safetensors", 100, "safetensors"),
        ("epoch_3.pt", 3, "pickle"),
        ("100.pth", 100, "pickle"),
        ("model_1000.bin", 1000, "pickle"),
        ("ckpt-00050.safetensors", 50, "safetensors"),
    ],
)
def test_one_file_per_step(tmp_path, name, step, fmt):
    state = _state(step)
    path = _write(tmp_path / name, state)

    source = LocalFolderSource(tmp_path)
    refs = source.list_refs()

    assert len(refs) == 1
    ref = refs[0]
    assert (ref.step, ref.label, ref.fmt) == (step, name, fmt)
    assert ref.files == (str(path.resolve()),)
    assert ref.size_bytes == path.stat().st_size
    fetched = source.fetch(ref)
    assert fetched == [path.resolve()]
    _assert_same(load_state_dict(fetched), state)


def test_mixed_names_sorted_by_step(tmp_path):
    for name in ("step_100.safetensors", "epoch_3.pt", "model_1000.bin", "ckpt-00050.safetensors"):
        _write(tmp_path / name, _state())
    refs = LocalFolderSource(tmp_path).list_refs()
    assert [(r.step, r.label) for r in refs] == [
        (3, "epoch_3.pt"), (50, "ckpt-00050.safetensors"),
        (100, "step_100.safetensors"), (1000, "model_1000.bin"),
    ]


def test_make_run_helper_folder(run_dir):
    refs = LocalFolderSource(run_dir).list_refs()
    assert [r.step for r in refs] == [0, 10, 20]
    _assert_same(load_state_dict(LocalFolderSource(run_dir).fetch(refs[1])), _state(10))


# ------------------------------------------------------------------ one folder per step
def test_checkpoint_folder_with_model_safetensors(tmp_path):
    folder = tmp_path / "checkpoint-500"
    state = _state(5)
    weights = _write(folder / "model.safetensors", state)
    # What a HF Trainer writes beside the weights: none of it is a weight file.
    torch.save({"state": {}, "param_groups": []}, folder / "optimizer.pt")
    torch.save({"last_epoch": 3}, folder / "scheduler.pt")
    (folder / "trainer_state.json").write_text("{}")

    source = LocalFolderSource(tmp_path)
    refs = source.list_refs()

    assert len(refs) == 1
    ref = refs[0]
    assert (ref.step, ref.label, ref.fmt) == (500, "checkpoint-500/", "safetensors")
    assert ref.files == (str(weights.resolve()),)
    _assert_same(load_state_dict(source.fetch(ref)), state)


def test_checkpoint_folder_with_pytorch_model_bin(tmp_path):
    state = _state(7)
    weights = _write(tmp_path / "checkpoint-70" / "pytorch_model.bin", state)

    refs = LocalFolderSource(tmp_path).list_refs()

    assert [(r.step, r.label, r.fmt) for r in refs] == [(70, "checkpoint-70/", "pickle")]
    assert refs[0].files == (str(weights.resolve()),)
    _assert_same(load_state_dict(refs[0].files), state)


def _write_sharded(folder: Path, state: dict[str, torch.Tensor], *, ext: str = "safetensors",
                   index_name: str = "model.safetensors.index.json") -> list[Path]:
    keys = sorted(state)
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2 :]]
    stem = "model" if ext == "safetensors" else "pytorch_model"
    shards, weight_map = [], {}
    for i, part in enumerate(halves, start=1):
        shard = folder / f"{stem}-{i:05d}-of-00002.{ext}"
        _write(shard, {k: state[k] for k in part})
        shards.append(shard)
        weight_map.update({k: shard.name for k in part})
    total = sum(t.numel() * t.element_size() for t in state.values())
    (folder / index_name).write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    return shards


def test_sharded_safetensors_folder_merges_shards(tmp_path):
    folder = tmp_path / "checkpoint-500"
    state = _state(3)
    shards = _write_sharded(folder, state)

    source = LocalFolderSource(tmp_path)
    refs = source.list_refs()

    assert len(refs) == 1
    ref = refs[0]
    assert (ref.step, ref.fmt) == (500, "safetensors")
    assert ref.files == tuple(str(s.resolve()) for s in shards)
    assert ref.size_bytes == sum(s.stat().st_size for s in shards)
    files = source.fetch(ref)
    # each shard alone holds only part of the tensors; together they are the state dict
    assert set(load_state_dict(files[:1])) < set(state)
    _assert_same(load_state_dict(files), state)


def test_sharded_pickle_folder_merges_shards(tmp_path):
    folder = tmp_path / "checkpoint-9"
    state = _state(9)
    shards = _write_sharded(folder, state, ext="bin", index_name="pytorch_model.bin.index.json")

    refs = LocalFolderSource(tmp_path).list_refs()

    assert [(r.step, r.fmt) for r in refs] == [(9, "pickle")]
    assert refs[0].files == tuple(str(s.resolve()) for s in shards)
    _assert_same(load_state_dict(refs[0].files), state)


def test_shard_index_naming_a_missing_shard(tmp_path):
    folder = tmp_path / "checkpoint-500"
    shards = _write_sharded(folder, _state())
    shards[1].unlink()

    with pytest.raises(IntegrityError, match=r"missing: \['model-00002-of-00002\.safetensors'\]"):
        LocalFolderSource(tmp_path).list_refs()


def test_shard_index_that_is_not_json(tmp_path):
    folder = tmp_path / "checkpoint-1"
    _write_sharded(folder, _state())
    (folder / "model.safetensors.index.json").write_text('{"metadata": {}}')

    with pytest.raises(IntegrityError, match=r"not a valid index.*'weight_map'"):
        LocalFolderSource(tmp_path).list_refs()


def test_checkpoint_folder_without_weights_is_skipped(tmp_path):
    _write(tmp_path / "checkpoint-100" / "model.safetensors", _state())
    (tmp_path / "checkpoint-200").mkdir()
    torch.save({"state": {}}, tmp_path / "checkpoint-200" / "optimizer.pt")

    assert [r.step for r in LocalFolderSource(tmp_path).list_refs()] == [100]


# ------------------------------------------------------------------ choosing among files
def test_same_stem_prefers_safetensors(tmp_path):
    st = _write(tmp_path / "step_100.safetensors", _state(1))
    _write(tmp_path / "step_100.pt", _state(2))

    refs = LocalFolderSource(tmp_path).list_refs()

    assert len(refs) == 1
    assert (refs[0].step, refs[0].fmt, refs[0].label) == (100, "safetensors", "step_100.safetensors")
    assert refs[0].files == (str(st.resolve()),)
    _assert_same(load_state_dict(refs[0].files), _state(1))


def test_two_names_for_one_step_is_an_error(tmp_path):
    _write(tmp_path / "step_100.safetensors", _state())
    _write(tmp_path / "ckpt-100.pt", _state())

    with pytest.raises(StepSelectionError, match="step 100") as info:
        LocalFolderSource(tmp_path).list_refs()
    message = str(info.value)
    assert "step_100.safetensors" in message
    assert "ckpt-100.pt" in message
    assert info.value.step == 100


def test_auxiliary_files_are_ignored(tmp_path):
    _write(tmp_path / "step_10.safetensors", _state())
    torch.save({"state": {}}, tmp_path / "optimizer.pt")
    torch.save({"last_epoch": 1}, tmp_path / "scheduler.pt")
    # these carry the same step: were they taken as checkpoints, step 10 would clash
    torch.save({"state": {}}, tmp_path / "optimizer_10.pt")
    torch.save({"last_epoch": 1}, tmp_path / "scheduler_10.pt")
    torch.save({"rng": torch.zeros(2)}, tmp_path / "rng_state_10.pth")
    (tmp_path / "probe.npz").write_bytes(b"not really")
    (tmp_path / "model_spec.json").write_text("{}")
    _write(tmp_path / ".step_10.safetensors", _state())

    refs = LocalFolderSource(tmp_path).list_refs()

    assert [(r.step, r.label) for r in refs] == [(10, "step_10.safetensors")]


# ------------------------------------------------------------------ errors
def test_empty_folder(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match=r"no checkpoints found.*an empty folder"):
        LocalFolderSource(tmp_path).list_refs()


def test_folder_with_only_unrelated_files(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "model_spec.json").write_text("{}")
    torch.save({"state": {}}, tmp_path / "optimizer.pt")

    with pytest.raises(CheckpointNotFoundError, match="no checkpoints found") as info:
        LocalFolderSource(tmp_path).list_refs()
    assert "notes.txt" in str(info.value)
    assert "optimizer.pt" in str(info.value)


def test_nonexistent_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(CheckpointNotFoundError, match="does not exist") as info:
        LocalFolderSource(missing)
    assert "nope" in str(info.value)
    assert isinstance(info.value, FileNotFoundError)


def test_path_that_is_a_file(tmp_path):
    path = _write(tmp_path / "step_1.safetensors", _state())
    with pytest.raises(CheckpointNotFoundError, match="is not a folder"):
        LocalFolderSource(path)


def test_fetch_after_file_disappeared(tmp_path):
    path = _write(tmp_path / "step_1.safetensors", _state())
    source = LocalFolderSource(tmp_path)
    (ref,) = source.list_refs()
    path.unlink()
    with pytest.raises(CheckpointNotFoundError, match=r"step 1 .*disappeared"):
        source.fetch(ref)


def test_sources_declare_optional_abilities_with_default_methods(run_dir):
    source = LocalFolderSource(run_dir)
    assert not (source.supports_release or source.supports_duplicates
                or source.supports_header_shapes or source.supports_config_dir)
    refs = source.list_refs()
    assert source.release(refs[0]) is False and source.duplicates(refs) == {}
    shapes = source.tensor_shapes(refs[0])  # default: read from the fetched files
    assert shapes["layers.0.weight"] == tuple(state_for(0)["layers.0.weight"].shape)
    assert source.config_dir(refs[0]) is None  # no config.json beside the weights


def test_a_source_family_with_abilities_drives_copies_and_releases(tmp_path, monkeypatch):
    import numpy as np
    import xarray as xr

    from flq_audit import api
    from tests._helpers.runs import make_run
    from tests._helpers.sources import hashed_folder_source

    HashedFolder = hashed_folder_source(monkeypatch)
    run = make_run(tmp_path / "run", (0, 10))
    (run / "step_20.safetensors").write_bytes((run / "step_10.safetensors").read_bytes())
    result = api.audit(f"hashed:{run}", model=str(run / "model_spec.json"),
                       probe=str(run / "probe.npz"), out=tmp_path / "s.zarr")
    assert result.written == [0, 10, 20] and HashedFolder.released == [0, 10, 20]
    assert 20 not in HashedFolder.fetched  # copied from step 10, never loaded
    ds = xr.open_zarr(tmp_path / "s.zarr")
    assert ds.duplicate_of.values.tolist() == [-1, -1, 10]
    for name in ("activations", "gram", "prediction", "nonfinite"):
        np.testing.assert_array_equal(ds[name].sel(step=20).values, ds[name].sel(step=10).values)
