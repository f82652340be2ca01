"""The swiss-roll recipe (the paper's Fig. 1): its short size end to end, checked against
input gradients, Grams and rank correlations computed here from the checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import xarray as xr
from safetensors.torch import load_file

from flq_audit.recipes import swiss_roll_report
from flq_audit.recipes.swiss_roll import InputGradients
from flq_audit.testing import ExtensionTests
from tests._helpers.recipes import run_recipe

pytestmark = pytest.mark.slow
STEPS, FRAMES = 20, (0, 10, 20)  # the short size


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    return run_recipe(swiss_roll_report.main, tmp_path_factory.mktemp("swiss_roll"))


def _state(out, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(out / "swiss_roll" / f"step_{step}.safetensors"))


def _gradient(out, step: int) -> np.ndarray:
    """∇_X of the mean squared error, by autograd on a forward pass written here."""
    state = {k: v.double() for k, v in _state(out, step).items()}
    probe = np.load(out / "swiss_roll" / "probe.npz")
    x = torch.tensor(probe["inputs"], dtype=torch.float64, requires_grad=True)
    y = torch.tensor(probe["targets"], dtype=torch.float64)
    gelu = torch.nn.functional.gelu
    h = gelu(gelu(x @ state["layers.0.weight"].T) @ state["layers.1.weight"].T + state["layers.1.bias"])
    pred = h @ state["layers.2.weight"].T + state["layers.2.bias"]
    loss = ((pred - y) ** 2).mean()
    return torch.autograd.grad(loss, x)[0].numpy()


def _rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    ranks = [np.argsort(np.argsort(v)).astype(float) for v in (a, b)]
    return float(abs(np.corrcoef(*ranks)[0, 1]))


def test_the_table_has_every_row(short_run):
    _out, record, rows = short_run
    assert record["experiment"] == "E1" and record["size"] == "short"
    assert set(rows) == {
        "|ρ(first principal coordinate, t)|, frame 0",
        "|ρ(first principal coordinate, t)|, frame 20",
        "first layer: stored VCS vs Σ(x⁺x⁺ᵀ − xxᵀ) from the stored ∇_X L (max relative difference)",
    }
    assert rows["|ρ(first principal coordinate, t)|, frame 20"]["verdict"] in (
        "reproduced", "same direction", "differs")
    assert rows["first layer: stored VCS vs Σ(x⁺x⁺ᵀ − xxᵀ) from the stored ∇_X L "
                "(max relative difference)"]["verdict"] == "reproduced"


def test_stored_input_gradients_and_grams_equal_the_checkpoints(short_run):
    out, _record, _rows = short_run
    ds = xr.open_zarr(out / "swiss_roll.zarr")
    for step in (0, 7, STEPS):
        stored = ds["input_gradient"].sel(step=step).values
        np.testing.assert_allclose(stored[:, :2], _gradient(out, step), rtol=1e-9, atol=1e-15)
        assert np.isnan(stored[:, 2:]).all()
        w = _state(out, step)["layers.0.weight"].double().numpy()
        gram = ds["gram"].sel(step=step, layer="layers.0").values[:2, :2]
        np.testing.assert_allclose(gram, w.T @ w, rtol=1e-5)


def test_rank_correlations_equal_an_independent_computation(short_run):
    out, _record, rows = short_run
    probe = np.load(out / "swiss_roll" / "probe.npz")
    x, t = probe["inputs"].astype(np.float64), probe["targets"][:, 0]
    total = np.zeros_like(x)
    for step in range(FRAMES[-1] + 1):
        total += _gradient(out, step)
        if step in (FRAMES[0], FRAMES[-1]):
            points = x - 700 * total
            points = (points - points.min(0)) / (points.max(0) - points.min(0))
            centred = points - points.mean(0)
            axis = np.linalg.eigh(centred.T @ centred)[1][:, -1]
            expected = _rank_correlation(centred @ axis, t)
            got = rows[f"|ρ(first principal coordinate, t)|, frame {step}"]["toolkit"]
            assert got == pytest.approx(expected, abs=1e-9)
    png = out / "swiss_roll.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.full
def test_full_size_has_the_papers_frames(tmp_path):
    swiss_roll_report.main([str(tmp_path), "--full"])
    rows = {r["quantity"]: r for r in json.loads((tmp_path / "results.json").read_text())["rows"]}
    assert "|ρ(first principal coordinate, t)|, frame 50" in rows


class TestInputGradients(ExtensionTests):
    """The recipe's step extension passes the suite every built-in extension passes."""

    @pytest.fixture
    def extension(self):
        return InputGradients()
