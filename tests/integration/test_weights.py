"""weights.load_state_dict and file_sha256 on real safetensors files and torch pickles."""

from __future__ import annotations

import argparse
import hashlib
import pathlib
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from flq_audit.errors import UnsafeCheckpointError, WeightsError
from flq_audit.weights import file_sha256, load_state_dict
from tests._helpers.runs import state_for


def _state() -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in state_for(0).items()}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


# ------------------------------------------------------------------ finding the state dict
@pytest.mark.parametrize("key", ["model", "state_dict", "model_state_dict", "module"])
def test_nested_state_dict_is_found(tmp_path, key):
    state = _state()
    path = tmp_path / "epoch_3.pt"
    torch.save({key: state, "epoch": 3, "best_loss": 0.25}, path)

    _assert_same(load_state_dict([path]), state)


def test_training_checkpoint_with_optimizer_state(tmp_path):
    state = _state()
    # the layout of torch.optim.Adam(...).state_dict() after one step (built by hand: fast)
    optimizer = {
        "state": {0: {"step": torch.tensor(1.0), "exp_avg": torch.ones(2, 3),
                      "exp_avg_sq": torch.ones(2, 3)}},
        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0]}],
    }
    path = tmp_path / "ckpt_5.pt"
    torch.save({"epoch": 5, "optimizer": optimizer, "model_state_dict": state}, path)

    _assert_same(load_state_dict([path]), state)


def test_lightning_checkpoint_loads_into_the_plain_network(tmp_path):
    """Lightning keeps the LightningModule's state dict: keys carry ``model.``."""
    from flq_audit.models import BuiltModel, load_weights
    from flq_audit.models.spec import build_from_spec
    from tests._helpers.runs import SMALL_SPEC

    state = _state()
    path = tmp_path / "epoch=3-step=1200.ckpt"
    torch.save({
        "epoch": 3, "global_step": 1200, "pytorch-lightning_version": "2.4.0",
        "state_dict": {f"model.{k}": v for k, v in state.items()},
        "optimizer_states": [{"state": {0: {"momentum_buffer": torch.ones(8, 6)}},
                              "param_groups": [{"lr": 0.1, "params": [0]}]}],
        "lr_schedulers": [], "callbacks": {}, "hyper_parameters": {"lr": 0.1},
    }, path)

    loaded = load_state_dict([path])
    assert sorted(loaded) == sorted(f"model.{k}" for k in state)
    built = BuiltModel(build_from_spec(SMALL_SPEC), origin="spec")
    _assert_same(load_weights(built, loaded, step=1200), state)
    _assert_same(dict(built.module.state_dict()), state)


def test_shared_prefix_is_kept_when_the_model_has_it():
    from flq_audit.weights import fit_key_prefix

    state = {"model.layers.0.weight": torch.zeros(1), "model.layers.0.bias": torch.zeros(1)}
    assert fit_key_prefix(state, {"model.layers.0.weight", "model.layers.0.bias"}) is state
    assert sorted(fit_key_prefix(state, {"layers.0.weight", "layers.0.bias"})) == [
        "layers.0.bias", "layers.0.weight"]
    assert fit_key_prefix(state, {"other.weight"}) is state  # stripping does not make it fit
    mixed = {"model.w": torch.zeros(1), "loss.w": torch.zeros(1)}
    assert fit_key_prefix(mixed, {"w"}) is mixed  # no single shared first name


def test_module_prefix_is_stripped(tmp_path):
    state = _state()
    path = tmp_path / "step_1.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)

    _assert_same(load_state_dict([path]), state)


def test_module_prefix_kept_unless_on_every_key(tmp_path):
    state = {"module.a": torch.ones(2), "b": torch.zeros(2)}
    path = tmp_path / "step_1.pt"
    torch.save(state, path)

    assert sorted(load_state_dict([path])) == ["b", "module.a"]


def test_dict_without_tensors_is_an_error(tmp_path):
    path = tmp_path / "step_1.pt"
    torch.save({"epoch": 1, "lr": 0.1}, path)

    with pytest.raises(WeightsError, match=r"step 4: .*step_1\.pt.*dict without tensors.*'epoch'"):
        load_state_dict([path], step=4)


def test_pickle_of_a_list_is_an_error(tmp_path):
    path = tmp_path / "step_1.pt"
    torch.save([torch.ones(2)], path)

    with pytest.raises(WeightsError, match="holds a list, expected a state dict"):
        load_state_dict([path])


# ------------------------------------------------------------------ dtypes and devices
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_half_precision_comes_back_float32(tmp_path, dtype, suffix):
    half = {k: v.to(dtype) for k, v in _state().items()}
    half["counter"] = torch.tensor([7], dtype=torch.int64)
    path = tmp_path / f"step_1{suffix}"
    if suffix == ".safetensors":
        save_file(half, str(path))
    else:
        torch.save(half, path)

    loaded = load_state_dict([path])

    assert loaded["counter"].dtype == torch.int64
    assert torch.equal(loaded["counter"], half["counter"])
    for key, value in half.items():
        if key == "counter":
            continue
        assert loaded[key].dtype == torch.float32, key
        assert torch.equal(loaded[key], value.float()), key


def _retag_storages(src: Path, dst: Path, location: str) -> None:
    """Copy a torch.save zip, rewriting the storages' location tag in ``data.pkl``.

    torch.save (pickle protocol 2) writes each storage's persistent id as a tuple
    ``('storage', <StorageType>, '<key>', '<location>', numel)``, the location as a
    BINUNICODE opcode: ``b'X'`` + 4-byte little-endian length + UTF-8 bytes. Protocol 2 has
    no frames, so swapping that one opcode for a longer one leaves a valid pickle. All other
    records (tensor data, version, byteorder, ...) are copied unchanged.
    """
    old = b"X\x03\x00\x00\x00cpu"
    new = b"X" + len(location).to_bytes(4, "little") + location.encode()
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        names = zin.namelist()
        assert any(n.endswith("/data.pkl") for n in names)
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                # 'cpu' is memoised after its first use, so it is written exactly once
                assert data.count(old) == 1, data
                data = data.replace(old, new)
            zout.writestr(info.filename, data)


def test_cuda_tagged_checkpoint_loads_on_cpu(tmp_path):
    state = _state()
    state["half"] = torch.arange(4, dtype=torch.float16)
    cpu_file = tmp_path / "cpu.pt"
    torch.save(state, cpu_file)
    cuda_file = tmp_path / "step_1.pt"
    _retag_storages(cpu_file, cuda_file, "cuda:0")

    # The tag is really there: without a map_location torch puts the storages on cuda:0.
    if torch.cuda.is_available():
        raw = torch.load(cuda_file, map_location=None, weights_only=True)
        assert all(t.device.type == "cuda" for t in raw.values())
    else:
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(cuda_file, map_location=None, weights_only=True)

    loaded = load_state_dict([cuda_file])

    assert all(t.device.type == "cpu" for t in loaded.values())
    assert loaded["half"].dtype == torch.float32
    assert torch.equal(loaded["half"], state["half"].float())
    _assert_same({k: v for k, v in loaded.items() if k != "half"},
                 {k: v for k, v in state.items() if k != "half"})


# ------------------------------------------------------------------ unsafe pickles
class _TouchOnLoad:
    """Unpickling this calls ``pathlib.Path.touch(marker)``: arbitrary code at load time."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "step_1.pt"
    torch.save({"w": torch.ones(2), "payload": _TouchOnLoad(marker)}, path)
    assert not marker.exists()

    with pytest.raises(UnsafeCheckpointError, match="--trust-pickle") as info:
        load_state_dict([path], step=1)

    assert not marker.exists()
    assert "step_1.pt" in str(info.value)
    assert info.value.step == 1
    assert isinstance(info.value, WeightsError)


def test_benign_object_pickle_needs_trust(tmp_path):
    tensor = torch.arange(6, dtype=torch.float32)
    path = tmp_path / "step_2.pt"
    torch.save({"w": tensor, "args": argparse.Namespace(lr=0.1, epochs=3)}, path)

    with pytest.raises(UnsafeCheckpointError, match="--trust-pickle") as info:
        load_state_dict([path])
    # the message names what was refused, and carries no terminal escape codes
    assert "argparse.Namespace" in str(info.value)
    assert "\x1b" not in str(info.value)

    loaded = load_state_dict([path], trust_pickle=True)
    assert list(loaded) == ["w"]
    assert torch.equal(loaded["w"], tensor)


def test_trusted_pickle_that_fails_is_a_weights_error(tmp_path):
    path = tmp_path / "step_3.pt"
    # full unpickling calls Path.touch on a file inside a folder that does not exist
    torch.save({"w": torch.ones(1), "x": _TouchOnLoad(tmp_path / "no" / "such" / "dir")}, path)

    with pytest.raises(WeightsError, match=r"unpickling .*step_3\.pt.* failed"):
        load_state_dict([path], trust_pickle=True)


# ------------------------------------------------------------------ damaged files
def test_truncated_safetensors(tmp_path):
    path = tmp_path / "step_7.safetensors"
    save_file(_state(), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])

    with pytest.raises(WeightsError, match=r"step_7\.safetensors.*truncated") as info:
        load_state_dict([path], step=7)
    assert info.value.step == 7
    assert info.value.path == str(path)


def test_truncated_pickle(tmp_path):
    path = tmp_path / "step_7.pt"
    torch.save(_state(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])

    with pytest.raises(WeightsError, match=r"cannot read .*step_7\.pt.* as a torch checkpoint"):
        load_state_dict([path])


def test_empty_safetensors_holds_no_tensors(tmp_path):
    path = tmp_path / "step_1.safetensors"
    save_file({}, str(path))

    with pytest.raises(WeightsError, match=r"\['step_1\.safetensors'\] hold no tensors"):
        load_state_dict([path])


# ------------------------------------------------------------------ hashing
@pytest.mark.parametrize("chunk", [1 << 22, 7])
def test_file_sha256(tmp_path, chunk):
    path = tmp_path / "step_1.safetensors"
    save_file(_state(), str(path))

    assert file_sha256(path, chunk_bytes=chunk) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_file_sha256_changes_with_content(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"\x00" * 100)
    b.write_bytes(b"\x00" * 99 + b"\x01")
    assert file_sha256(a) != file_sha256(b)
