"""Probe datasets: builtins, files, validation, fingerprints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from flq_audit.errors import ProbeError
from flq_audit.probes import load_probe, make_probe


def _arrays(n: int = 12, features: int = 4, classes: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, features)).astype(np.float32), rng.integers(0, classes, n)


# ------------------------------------------------------------------ builtins
def test_builtin_digits():
    probe = load_probe("digits")

    assert probe.name == "digits"
    assert probe.kind == "classes"
    assert probe.n_samples == 1797
    assert probe.inputs.shape == (1797, 64)
    assert probe.inputs.dtype == np.float32
    assert probe.inputs.min() == 0.0
    assert probe.inputs.max() == 1.0
    assert probe.num_classes == 10
    assert probe.targets.shape == (1797, 10)
    assert set(np.unique(probe.targets)) == {0.0, 1.0}
    np.testing.assert_array_equal(probe.targets.sum(axis=1), 1.0)
    np.testing.assert_array_equal(probe.targets.argmax(axis=1), probe.labels)
    assert sorted(set(probe.labels.tolist())) == list(range(10))


def test_builtin_swissroll():
    probe = load_probe("swissroll")

    assert probe.kind == "continuous"
    assert probe.inputs.shape == (1000, 2)
    assert probe.targets.shape == (1000, 1)
    assert probe.targets.dtype == np.float64
    assert probe.labels is None and probe.num_classes is None
    assert 0.0 <= probe.targets.min() < probe.targets.max() <= 1.0
    # a real continuous target, not a handful of class values
    assert len(np.unique(probe.targets)) > 900
    assert load_probe("swissroll").fingerprint == probe.fingerprint


# ------------------------------------------------------------------ files
def _check_file_probe(probe, inputs, labels, classes):
    assert probe.kind == "classes"
    np.testing.assert_array_equal(probe.inputs, inputs)
    np.testing.assert_array_equal(probe.labels, labels)
    assert probe.num_classes == classes
    assert probe.targets.shape == (len(labels), classes)
    np.testing.assert_array_equal(probe.targets.argmax(axis=1), labels)


def test_npz_file(tmp_path):
    inputs, labels = _arrays()
    path = tmp_path / "probe.npz"
    np.savez(path, inputs=inputs, targets=labels, num_classes=np.int64(3))

    probe = load_probe(path)

    assert probe.name == "probe.npz"
    _check_file_probe(probe, inputs, labels, 3)


def test_safetensors_file(tmp_path):
    inputs, labels = _arrays()
    path = tmp_path / "probe.safetensors"
    save_file({"inputs": inputs, "targets": labels.astype(np.int64),
               "num_classes": np.array([3], dtype=np.int64)}, str(path))

    _check_file_probe(load_probe(str(path)), inputs, labels, 3)


def test_pt_file(tmp_path):
    inputs, labels = _arrays()
    path = tmp_path / "probe.pt"
    torch.save({"inputs": torch.from_numpy(inputs), "targets": torch.from_numpy(labels),
                "num_classes": 3}, path)

    _check_file_probe(load_probe(path), inputs, labels, 3)


def test_continuous_targets_from_file(tmp_path):
    inputs, _ = _arrays()
    targets = np.linspace(0, 1, 24).reshape(12, 2)
    path = tmp_path / "probe.npz"
    np.savez(path, inputs=inputs, targets=targets)

    probe = load_probe(path)

    assert probe.kind == "continuous"
    np.testing.assert_array_equal(probe.targets, targets)


def test_file_without_targets(tmp_path):
    path = tmp_path / "probe.npz"
    np.savez(path, inputs=np.zeros((3, 2)), labels=np.zeros(3))
    with pytest.raises(ProbeError, match=r"must hold arrays 'inputs' and 'targets' \(or x/y, "
                       r"X/y, X/Y, data/labels\); it holds \['inputs', 'labels'\]"):
        load_probe(path)


def _write_probe(path, inputs_key: str, targets_key: str, x, y) -> None:
    """A probe file in the format its suffix names, with the given array names."""
    if path.suffix == ".npz":
        np.savez(path, **{inputs_key: x, targets_key: y}, num_classes=np.int64(4))
    elif path.suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file({inputs_key: x, targets_key: y, "num_classes": np.array([4])}, str(path))
    else:
        torch.save({inputs_key: torch.from_numpy(x), targets_key: torch.from_numpy(y),
                    "num_classes": torch.tensor(4)}, path)


@pytest.mark.parametrize(("name", "inputs_key", "targets_key"), [
    ("p.npz", "x", "y"), ("p.safetensors", "X", "y"), ("p.pt", "data", "labels"),
    ("q.npz", "X", "Y"), ("q.safetensors", "inputs", "targets"),
])
def test_probe_array_names(tmp_path, name, inputs_key, targets_key):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(12, 3)).astype(np.float32), rng.integers(0, 4, 12)
    _write_probe(tmp_path / name, inputs_key, targets_key, x, y)
    probe = load_probe(tmp_path / name)
    np.testing.assert_array_equal(probe.inputs, x)
    np.testing.assert_array_equal(probe.labels, y)
    assert probe.targets.shape == (12, 4)


def test_probe_keys_name_the_arrays_and_win_over_known_names(tmp_path):
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(6, 2)).astype(np.float32), rng.integers(0, 4, 6)
    path = tmp_path / "p.npz"
    np.savez(path, feats=x, cls=y, x=np.zeros((6, 5)), y=np.zeros(6, np.int64),
             num_classes=np.int64(4))
    np.testing.assert_array_equal(load_probe(path, ("feats", "cls")).inputs, x)
    assert load_probe(path).inputs.shape == (6, 5)  # x/y without --probe-keys


def test_unknown_probe_layout_lists_the_arrays_found(tmp_path):
    path = tmp_path / "p.npz"
    np.savez(path, images=np.zeros((3, 2)), classes=np.zeros(3))
    with pytest.raises(ProbeError, match=r"'inputs' and 'targets' \(or x/y, X/y, X/Y, "
                       r"data/labels\); it holds \['classes', 'images'\]") as err:
        load_probe(path)
    assert "--probe-keys INPUTS,TARGETS" in str(err.value)


def test_probe_keys_the_file_lacks_are_refused_listing_its_arrays(tmp_path):
    path = tmp_path / "p.npz"
    np.savez(path, inputs=np.zeros((3, 2)), targets=np.zeros(3, np.int64),
             num_classes=np.int64(2))
    with pytest.raises(ProbeError, match=r"holds no array 'foo' or 'bar' \(--probe-keys "
                       r"foo,bar\); it holds \['inputs', 'num_classes', 'targets'\]"):
        load_probe(path, ("foo", "bar"))
    assert load_probe(path, ("foo", "bar"), fallback=True).inputs.shape == (3, 2)


def test_pt_file_that_is_not_a_dict(tmp_path):
    path = tmp_path / "probe.pt"
    torch.save(torch.zeros(3, 2), path)
    with pytest.raises(ProbeError, match="must hold a dict of tensors"):
        load_probe(path)


def test_unsupported_extension(tmp_path):
    path = tmp_path / "probe.csv"
    path.write_text("1,2\n")
    with pytest.raises(ProbeError, match=r"unsupported extension '\.csv'"):
        load_probe(path)


def test_unreadable_file(tmp_path):
    path = tmp_path / "probe.npz"
    path.write_bytes(b"garbage")
    with pytest.raises(ProbeError, match=r"cannot read probe file .*probe\.npz"):
        load_probe(path)


def test_unknown_probe_name():
    with pytest.raises(ProbeError, match=r"'mnist' is neither a builtin \(digits, swissroll\)"):
        load_probe("mnist")


# ------------------------------------------------------------------ class targets
def test_num_classes_is_never_inferred_from_labels(tmp_path):
    inputs = np.zeros((6, 2), dtype=np.float32)
    labels = np.array([0, 1, 2, 2, 1, 0])
    path = tmp_path / "probe.npz"
    np.savez(path, inputs=inputs, targets=labels, num_classes=np.int64(5))

    probe = load_probe(path)

    assert probe.num_classes == 5
    assert probe.targets.shape == (6, 5)
    np.testing.assert_array_equal(probe.targets[:, 3:], 0.0)
    np.testing.assert_array_equal(probe.targets[np.arange(6), labels], 1.0)


def test_integer_targets_need_num_classes():
    inputs, labels = _arrays()
    with pytest.raises(ProbeError, match="integer targets need 'num_classes'") as info:
        make_probe("p", inputs, labels)
    assert "num_classes=C" in str(info.value)


def test_integer_targets_without_num_classes_in_file(tmp_path):
    inputs, labels = _arrays()
    path = tmp_path / "probe.npz"
    np.savez(path, inputs=inputs, targets=labels)
    with pytest.raises(ProbeError, match="need 'num_classes'"):
        load_probe(path)


def test_float_labels_with_num_classes():
    probe = make_probe("p", np.zeros((3, 2)), np.array([0.0, 2.0, 1.0]), num_classes=3)
    assert probe.kind == "classes"
    np.testing.assert_array_equal(probe.labels, [0, 2, 1])
    assert probe.labels.dtype == np.int64


def test_fractional_labels_are_refused():
    with pytest.raises(ProbeError, match="class labels must be integers"):
        make_probe("p", np.zeros((2, 2)), np.array([0.0, 1.5]), num_classes=3)


@pytest.mark.parametrize(("labels", "found"), [([0, 1, 3], r"\[0, 3\]"), ([-1, 0, 1], r"\[-1, 1\]")])
def test_label_out_of_range(labels, found):
    with pytest.raises(ProbeError, match=rf"labels must lie in \[0, 3\), found {found}"):
        make_probe("p", np.zeros((3, 2)), np.array(labels), num_classes=3)


def test_two_dimensional_labels_are_refused():
    with pytest.raises(ProbeError, match=r"class labels must be \(N,\), got \(3, 1\)"):
        make_probe("p", np.zeros((3, 2)), np.zeros((3, 1), dtype=np.int64), num_classes=2)


# ------------------------------------------------------------------ input validation
def test_nan_input_is_refused():
    inputs, labels = _arrays()
    inputs[4, 1] = np.nan
    inputs[7, 0] = np.inf
    with pytest.raises(ProbeError, match=r"'p': 2 input sample\(s\) contain NaN or infinity"):
        make_probe("p", inputs, labels, num_classes=3)


def test_nan_target_is_refused():
    with pytest.raises(ProbeError, match="targets contain NaN"):
        make_probe("p", np.zeros((2, 2)), np.array([0.5, np.nan]))


def test_length_mismatch():
    inputs, labels = _arrays(n=12)
    with pytest.raises(ProbeError, match="12 inputs but 11 targets"):
        make_probe("p", inputs, labels[:11], num_classes=3)


@pytest.mark.parametrize("inputs", [np.zeros(5), np.zeros((0, 3))])
def test_inputs_must_be_a_batch(inputs):
    with pytest.raises(ProbeError, match=r"inputs must be \(N, \.\.\.\) with N > 0"):
        make_probe("p", inputs, np.zeros(len(inputs)))


def test_non_numeric_inputs():
    with pytest.raises(ProbeError, match="inputs must be real numbers"):
        make_probe("p", np.array([["a", "b"]]), np.zeros(1))


def test_input_dtypes_images_keep_shape():
    inputs = np.arange(2 * 1 * 3 * 3, dtype=np.int64).reshape(2, 1, 3, 3)
    probe = make_probe("img", inputs, np.array([[0.1], [0.2]]))
    assert probe.inputs.dtype == np.float32
    assert probe.inputs.shape == (2, 1, 3, 3)
    # float64 stays float64: exact FL replays of float64 training need the same inputs
    exact = make_probe("img64", inputs.astype(np.float64), np.array([[0.1], [0.2]]))
    assert exact.inputs.dtype == np.float64
    half = make_probe("img16", inputs.astype(np.float16), np.array([[0.1], [0.2]]))
    assert half.inputs.dtype == np.float32


# ------------------------------------------------------------------ fingerprint and head
def test_fingerprint_is_stable_and_sensitive():
    inputs, labels = _arrays()
    base = make_probe("a", inputs, labels, num_classes=3).fingerprint

    assert make_probe("b", inputs.copy(), labels.copy(), num_classes=3).fingerprint == base
    changed = inputs.copy()
    changed[5, 2] += 1e-3
    assert make_probe("a", changed, labels, num_classes=3).fingerprint != base
    other_labels = labels.copy()
    other_labels[0] = (other_labels[0] + 1) % 3
    assert make_probe("a", inputs, other_labels, num_classes=3).fingerprint != base
    # same labels, more classes: different one-hot targets
    assert make_probe("a", inputs, labels, num_classes=4).fingerprint != base
    assert len(base) == 64 and int(base, 16) >= 0


def test_fingerprint_sees_the_shape():
    flat = make_probe("a", np.arange(12.0).reshape(2, 6), np.zeros((2, 1)))
    square = make_probe("a", np.arange(12.0).reshape(2, 2, 3), np.zeros((2, 1)))
    assert flat.fingerprint != square.fingerprint


def test_head():
    inputs, labels = _arrays(n=12)
    probe = make_probe("p", inputs, labels, num_classes=3)

    head = probe.head(5)

    assert head.n_samples == 5
    np.testing.assert_array_equal(head.inputs, inputs[:5])
    np.testing.assert_array_equal(head.labels, labels[:5])
    np.testing.assert_array_equal(head.targets, probe.targets[:5])
    assert (head.name, head.kind, head.num_classes) == ("p", "classes", 3)
    assert head.fingerprint != probe.fingerprint
    assert probe.head(12) is probe
    assert probe.head(100) is probe


def test_head_of_continuous_probe():
    probe = make_probe("c", np.zeros((4, 2)), np.arange(4.0))
    head = probe.head(2)
    assert head.labels is None
    assert head.targets.shape == (2, 1)
