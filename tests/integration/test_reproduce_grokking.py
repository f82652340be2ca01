"""The grokking reproduction (E10): its folders and stores, and its table checked against an
independent computation from the checkpoints it wrote."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.model_selection import train_test_split

from flq_audit.models import build_from_spec
from flq_audit.recipes import _paper_runs, grokking_paper
from flq_audit.recipes._paper_curves import Curves

ROOT = Path(__file__).resolve().parents[2]
P = 61
STEPS_PER_EPOCH = 82  # ceil(2604 / 32): the last, short batch of each epoch is kept


def _pairs() -> tuple[np.ndarray, np.ndarray]:
    """All (a, b) as concatenated one-hots and (a + b) mod 61, row a·61 + b."""
    a, b = np.meshgrid(np.arange(P), np.arange(P), indexing="ij")
    a, b = a.ravel(), b.ravel()
    x = np.concatenate([np.eye(P)[a], np.eye(P)[b]], axis=1)
    return x, (a + b) % P


def _tl(h: np.ndarray, labels: np.ndarray) -> float:
    """No-intercept least squares of the centered one-hot labels on h, variance-weighted R²,
    singular values below 1e-6 σ_max treated as zero (the cut-off of docs/concepts.md)."""
    y = np.eye(P)[labels]
    y = y - y.mean(axis=0)
    coef, *_ = np.linalg.lstsq(h, y, rcond=1e-6)
    return 1.0 - float(((y - h @ coef) ** 2).sum() / (y**2).sum())


def _hidden(state: dict[str, torch.Tensor], x: np.ndarray) -> list[np.ndarray]:
    """The outputs of the three hidden ReLU layers, computed by hand from the weights."""
    h, out = torch.from_numpy(x).double(), []
    for k in range(3):
        h = torch.relu(h @ state[f"layers.{k}.weight"].double().T + state[f"layers.{k}.bias"].double())
        out.append(h.numpy())
    return out


@pytest.fixture(scope="module")
def short_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("grok") / "grok61"
    argv = sys.argv
    sys.argv = ["reproduce_grokking.py", str(out), "--short"]
    try:
        runpy.run_path(str(ROOT / "recipes" / "reproduce_grokking.py"), run_name="__main__")
    finally:
        sys.argv = argv
    return out


@pytest.mark.slow
def test_short_run_layout_and_split(short_run):
    assert sorted(p.name for p in short_run.glob("*.zarr")) == ["wd0.5.zarr", "wd0.zarr"]
    for name in ("wd0", "wd0.5"):
        folder = short_run / name
        steps = sorted(int(p.stem.split("_")[1]) for p in folder.glob("step_*.safetensors"))
        assert steps == [0, 2 * STEPS_PER_EPOCH, 4 * STEPS_PER_EPOCH]
        x, y = _pairs()
        train, test = train_test_split(np.arange(P * P), test_size=0.3, random_state=0)
        assert (len(train), len(test)) == (2604, 1117)
        probe = np.load(folder / "probe.npz")
        np.testing.assert_array_equal(probe["inputs"], x[train])
        np.testing.assert_array_equal(probe["targets"], y[train])
        np.testing.assert_array_equal(np.load(folder / "test_probe.npz")["targets"], y[test])
        assert json.loads((folder / "model_spec.json").read_text())["widths"] == [256, 256, 256]
    store = short_run / "wd0.5.zarr"
    from flq_audit.api import open_store

    assert json.loads(open_store(store).attrs["tags"]) == {"weight_decay": 0.5}
    assert (short_run / "figures_13_14.png").stat().st_size > 10_000


@pytest.mark.slow
def test_short_run_table_matches_the_checkpoints(short_run):
    """TL and test accuracy in the table, recomputed from the saved weights by least squares."""
    record = json.loads((short_run / "results.json").read_text())
    assert record["experiment"] == "E10" and record["size"] == "short"
    rows = {row["quantity"]: row for row in record["rows"]}
    x, y = _pairs()
    train, test = train_test_split(np.arange(P * P), test_size=0.3, random_state=0)
    for wd in (0.0, 0.5):
        lam = f"λ = {wd:g}"
        folder = short_run / grokking_paper.run_name(wd)
        steps = [0, 2 * STEPS_PER_EPOCH, 4 * STEPS_PER_EPOCH]  # 20 epochs hold all three
        states = [load_file(str(folder / f"step_{s}.safetensors")) for s in steps]
        tl = np.array([[max(_tl(h, y[train]), 0.0) for h in _hidden(s, x[train])] for s in states])
        expected = tl.mean(axis=0)
        for k in range(3):
            tl_row = rows[f"TL L{k + 1}, last 20 epochs, {lam}"]
            assert tl_row["toolkit"] == pytest.approx(expected[k], abs=1e-4)
        gap = rows[f"TL gap L3 − L2, last 20 epochs, {lam}"]["toolkit"]
        assert gap == pytest.approx(expected[2] - expected[1], abs=1e-4)
        model = build_from_spec(json.loads((folder / "model_spec.json").read_text()))
        model.load_state_dict(states[-1])
        with torch.no_grad():
            predicted = model(torch.from_numpy(x[test]).float()).argmax(dim=1).numpy()
        accuracy = float((predicted == y[test]).mean())
        assert rows[f"test accuracy at the end, {lam}"]["toolkit"] == pytest.approx(accuracy, abs=1e-6)
        for quantity in ("TL ordered by depth (L1 < L2 < L3) at the end",
                         "first epoch with train accuracy ≥ 0.99",
                         "TL gap L3 − L2, early peak (epochs ≤ 150)",
                         "TL gap L3 − L2, minimum after the early peak"):
            assert f"{quantity}, {lam}" in rows
    assert "first epoch with test accuracy ≥ 0.95, λ = 0.5" in rows
    assert "TL gap L3 − L2 narrows with grokking, stays wide without it" in rows
    assert rows["TL L1, last 20 epochs, λ = 0"]["paper"] == 0.19
    assert all(row["verdict"] in ("reproduced", "same direction", "differs", "not compared")
               for row in record["rows"])


@pytest.mark.slow
def test_short_run_compares_its_runs_by_weight_decay(short_run, tmp_path):
    """The recipe's own comparison, and the issue's command line over ``OUT_DIR/*.zarr``."""
    import xarray as xr

    from tests._helpers.cli import describe, invoke

    with xr.open_dataset(short_run / "compare.nc") as combined:
        assert combined.sizes["run"] == 2
        assert sorted(combined["weight_decay"].values.tolist()) == [0.0, 0.5]
    assert (short_run / "compare").is_dir()
    stores = sorted(short_run.glob("*.zarr"))
    result = invoke("compare", *stores, "--by", "weight_decay", "--out", tmp_path / "cmp.nc",
                    "--report", tmp_path / "cmp")
    assert result.exit_code == 0, describe(result)
    with xr.open_dataset(tmp_path / "cmp.nc") as combined:
        assert sorted(combined["weight_decay"].values.tolist()) == [0.0, 0.5]
        tl = combined["target_linearity"].sel(layer="layers.3")
        assert tl.sizes["run"] == 2 and np.isfinite(tl.values).all()
    assert any((tmp_path / "cmp").glob("*.png"))


def test_checkpoint_epochs_and_run_names():
    assert _paper_runs.checkpoint_epochs(500, 10)[:3] == [0, 10, 20]
    assert _paper_runs.checkpoint_epochs(500, 10)[-1] == 500
    assert [grokking_paper.run_name(w) for w in grokking_paper.WEIGHT_DECAYS] == [
        "wd0", "wd0.25", "wd0.5", "wd0.75", "wd1"]


def test_epoch_batches_cover_the_training_split_once():
    batches = list(_paper_runs.epoch_batches(2604, 32, torch.Generator().manual_seed(0)))
    assert len(batches) == STEPS_PER_EPOCH and len(batches[-1]) == 2604 - 81 * 32
    assert sorted(torch.cat(batches).tolist()) == list(range(2604))


def test_curves_smooth_over_epochs_not_checkpoints():
    """Checkpoints every 10 epochs: a 20-epoch average spans two of them, after clipping at 0."""
    epochs = np.arange(0, 60, 10, dtype=float)
    tl = np.array([-0.2, 0.2, 0.4, 0.6, 0.8, 1.0])
    run = Curves(0.5, epochs, tl[:, None], np.ones(6), np.ones(6))
    x, y = run.smoothed(tl, 20)
    assert x.tolist() == [10.0, 20.0, 30.0, 40.0, 50.0]
    np.testing.assert_allclose(y, [0.1, 0.3, 0.5, 0.7, 0.9])
    assert run.window(1000) == 6 and run.first_epoch(tl, 0.5) == 30.0
    assert np.isnan(run.first_epoch(tl, 2.0))


@pytest.mark.full
def test_full_run_groks_with_weight_decay(tmp_path):
    grokking_paper.main([str(tmp_path / "grok61"), "--full"])
    rows = {r["quantity"]: r for r in json.loads((tmp_path / "grok61" / "results.json").read_text())["rows"]}
    assert rows["test accuracy at the end, λ = 0"]["toolkit"] < 0.1  # memorizes, never generalizes
    assert rows["test accuracy at the end, λ = 0.5"]["toolkit"] > 0.9  # groks
    assert rows["TL gap L3 − L2 narrows with grokking, stays wide without it"]["verdict"] == "reproduced"
