"""Readiness of local checkpoints: a file counts once complete, a folder once complete and
unchanged between two looks; a lone shard without its index never counts."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save

from flq_audit.sources._base import CheckpointRef
from flq_audit.sources.ready import Readiness, file_unready, folder_unready

STATE = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "b": torch.ones(3)}


def _half(path: Path, data: bytes, n: int) -> Path:
    path.write_bytes(data[:n])
    return path


def test_a_complete_safetensors_file_is_ready(tmp_path):
    path = tmp_path / "step_1.safetensors"
    path.write_bytes(save(STATE))
    assert file_unready(path) is None


def test_a_safetensors_file_cut_anywhere_is_not_ready(tmp_path):
    data = save(STATE)
    header = 8 + int.from_bytes(data[:8], "little")
    for n in (0, 5, 8, header - 3, header, header + 7, len(data) - 1):
        reason = file_unready(_half(tmp_path / "step_1.safetensors", data, n))
        assert reason is not None, n
    reason = file_unready(_half(tmp_path / "step_1.safetensors", data, len(data) - 1))
    assert reason == f"{len(data) - 1} of {len(data)} bytes written"


def test_a_torch_pickle_is_ready_only_when_whole(tmp_path):
    path = tmp_path / "epoch_1.pt"
    torch.save(STATE, path)
    assert file_unready(path) is None
    data = path.read_bytes()
    assert file_unready(_half(path, data, len(data) // 2)) is not None
    legacy = tmp_path / "epoch_2.pt"
    torch.save(STATE, legacy, _use_new_zipfile_serialization=False)
    assert file_unready(legacy) is None
    whole = legacy.read_bytes()
    assert file_unready(_half(legacy, whole, len(whole) // 2)) is not None


def test_a_lone_shard_waits_for_its_index(tmp_path):
    shard = tmp_path / "model-00001-of-00002.safetensors"
    shard.write_bytes(save(STATE))
    assert folder_unready([shard]) == "shard index not written yet"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"w": shard.name}}))
    assert folder_unready([shard]) is None


def _folder_ref(folder: Path) -> CheckpointRef:
    return CheckpointRef(step=5, label=folder.name + "/", location=str(folder),
                         files=(str(folder / "model.safetensors"),), fmt="safetensors")


def test_a_folder_counts_once_it_looks_the_same_at_two_polls(tmp_path):
    folder = tmp_path / "checkpoint-5"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(save(STATE))
    ref, readiness = _folder_ref(folder), Readiness()
    assert readiness.unready(ref).startswith("seen once")  # type: ignore[union-attr]
    assert readiness.unready(ref).startswith("seen once")  # type: ignore[union-attr]
    readiness.next_poll()
    (folder / "optimizer.pt").write_bytes(b"partial")  # the trainer is still writing
    assert readiness.unready(ref) == "sizes still changing"
    readiness.next_poll()
    assert readiness.unready(ref) is None
    ready, waiting = readiness.split([ref])
    assert ready == [ref] and waiting == {}


def test_hub_checkpoints_are_ready(tmp_path):
    ref = CheckpointRef(step=1, label="step1", location="org/name", files=("model.safetensors",),
                        fmt="safetensors", revision="step1", commit="a" * 40)
    assert Readiness().unready(ref) is None
