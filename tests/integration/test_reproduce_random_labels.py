"""The random-labels reproduction (E9): relabelling, folders and stores, and its table checked
against an independent computation from the checkpoints it wrote."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from flq_audit.recipes import random_labels, random_labels_results
from flq_audit.recipes._paper_curves import Curves

ROOT = Path(__file__).resolve().parents[2]
STEPS_PER_EPOCH = 20  # ceil(1257 / 64)


def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    data = load_digits()
    return train_test_split(data.data / 16.0, data.target, test_size=0.3, random_state=0)


def _tl(h: np.ndarray, labels: np.ndarray) -> float:
    """No-intercept least squares of the centered one-hot labels on h, variance-weighted R²,
    singular values below 1e-6 σ_max treated as zero (the cut-off of docs/concepts.md)."""
    y = np.eye(10)[labels]
    y = y - y.mean(axis=0)
    coef, *_ = np.linalg.lstsq(h, y, rcond=1e-6)
    return 1.0 - float(((y - h @ coef) ** 2).sum() / (y**2).sum())


def _last_hidden(state: dict[str, torch.Tensor], x: np.ndarray) -> np.ndarray:
    """The output of the third hidden GELU layer, computed by hand from the weights."""
    h = torch.from_numpy(x).double()
    for k in range(3):
        h = torch.nn.functional.gelu(h @ state[f"layers.{k}.weight"].double().T
                                     + state[f"layers.{k}.bias"].double())
    return h.numpy()


@pytest.fixture(scope="module")
def short_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("noise") / "random_labels"
    argv = sys.argv
    sys.argv = ["reproduce_random_labels.py", str(out)]  # --short is the default
    try:
        runpy.run_path(str(ROOT / "recipes" / "reproduce_random_labels.py"), run_name="__main__")
    finally:
        sys.argv = argv
    return out


def test_relabel_changes_the_requested_fraction():
    labels = np.arange(1000) % 10
    noisy = random_labels.relabel(labels, 0.5, np.random.default_rng(1))
    changed = noisy != labels
    # 500 rows redrawn, about a tenth of them keep their label by chance
    assert 400 <= changed.sum() <= 500
    assert set(np.unique(noisy)) <= set(range(10))
    np.testing.assert_array_equal(random_labels.relabel(labels, 0.0, np.random.default_rng(1)), labels)
    full = random_labels.relabel(labels, 1.0, np.random.default_rng(1))
    assert abs(float((full == labels).mean()) - 0.1) < 0.04  # chance agreement only
    with pytest.raises(ValueError, match="fraction"):
        random_labels.relabel(labels, 1.5, np.random.default_rng(1))


def test_noisy_digits_is_seeded_and_relabels_both_splits():
    a, b = random_labels.noisy_digits(0.75), random_labels.noisy_digits(0.75)
    np.testing.assert_array_equal(a["y_train"], b["y_train"])
    x_train, _, y_train, y_test = _digits()
    assert (len(a["x_train"]), len(a["x_test"])) == (1257, 540)
    np.testing.assert_allclose(a["x_train"], x_train, rtol=1e-6)
    np.testing.assert_array_equal(a["y_train_true"], y_train)
    for noisy, true in ((a["y_train"], y_train), (a["y_test"], y_test)):
        kept = float((noisy == true).mean())
        assert abs(kept - (0.25 + 0.75 / 10)) < 0.05


def test_onset_is_the_first_epoch_past_half_the_rise():
    epochs = np.arange(0, 100, 10, dtype=float)
    late = np.array([0.2, 0.2, 0.21, 0.22, 0.25, 0.4, 0.55, 0.6, 0.6, 0.6])  # S-shaped
    early = np.array([0.2, 0.5, 0.58, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6])
    flat = np.full(10, 0.3)
    run = Curves(0.9, epochs, np.stack([flat, late, early], axis=1), np.ones(10), np.ones(10))
    assert random_labels_results.onset(run, 1) == 50.0  # 0.4 ≥ 0.2 + 0.5 · 0.4
    assert random_labels_results.onset(run, 2) == 10.0
    assert np.isnan(random_labels_results.onset(run, 0))


@pytest.mark.slow
def test_short_run_layout(short_run):
    assert sorted(p.name for p in short_run.glob("*.zarr")) == ["noise0.zarr", "noise1.zarr"]
    for name in ("noise0", "noise1"):
        steps = sorted(int(p.stem.split("_")[1]) for p in (short_run / name).glob("step_*.safetensors"))
        assert steps == [0, 2 * STEPS_PER_EPOCH, 4 * STEPS_PER_EPOCH]
    _, _, y_train, _ = _digits()
    np.testing.assert_array_equal(np.load(short_run / "noise0" / "probe.npz")["targets"], y_train)
    noisy = np.load(short_run / "noise1" / "probe.npz")["targets"]
    assert abs(float((noisy == y_train).mean()) - 0.1) < 0.04
    from flq_audit.api import open_store

    assert json.loads(open_store(short_run / "noise1.zarr").attrs["tags"]) == {"label_noise": 1.0}
    assert (short_run / "compare.nc").is_file() and (short_run / "compare").is_dir()
    assert (short_run / "figure_12.png").stat().st_size > 10_000


@pytest.mark.slow
def test_short_run_table_matches_the_checkpoints(short_run):
    record = json.loads((short_run / "results.json").read_text())
    assert record["experiment"] == "E9" and record["size"] == "short"
    rows = {row["quantity"]: row for row in record["rows"]}
    x_train, x_test, _, _ = _digits()
    for name, p in (("noise0", 0.0), ("noise1", 1.0)):
        folder = short_run / name
        state = load_file(str(folder / f"step_{4 * STEPS_PER_EPOCH}.safetensors"))
        targets = np.load(folder / "probe.npz")["targets"]
        expected = max(_tl(_last_hidden(state, x_train), targets), 0.0)
        tl_row = rows[f"last-layer TL (L3) at the end, p = {p:g}"]
        assert tl_row["toolkit"] == pytest.approx(expected, abs=1e-4)
        test_targets = np.load(folder / "test_probe.npz")["targets"]
        logits = _last_hidden(state, x_test) @ state["layers.3.weight"].double().numpy().T
        logits += state["layers.3.bias"].double().numpy()
        accuracy = float((logits.argmax(axis=1) == test_targets).mean())
        assert rows[f"test accuracy at the end, p = {p:g}"]["toolkit"] == pytest.approx(accuracy, abs=1e-6)
        assert f"train accuracy at the end, p = {p:g}" in rows
    assert rows["last-layer TL (L3) at the end, p = 0"]["paper"] == 0.43
    for quantity in ("last-layer TL falls as p grows", "test accuracy falls as p grows",
                     "train accuracy falls as p grows", "test accuracy at p = 1 (chance is 0.1)"):
        assert rows[quantity]["verdict"] in ("reproduced", "same direction", "differs")


@pytest.mark.full
def test_full_run_trends(tmp_path):
    random_labels.main([str(tmp_path / "random_labels"), "--full"])
    record = json.loads((tmp_path / "random_labels" / "results.json").read_text())
    rows = {r["quantity"]: r for r in record["rows"]}
    assert rows["last-layer TL falls as p grows"]["verdict"] == "same direction"
    assert rows["test accuracy at p = 1 (chance is 0.1)"]["verdict"] == "reproduced"
