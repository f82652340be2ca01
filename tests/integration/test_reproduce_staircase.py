"""The staircase recipe (the paper's Fig. 8): its short size end to end, checked against a
training loop and norms written here, independently of the recipe's code."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import xarray as xr
from safetensors.numpy import load_file

from flq_audit.recipes import staircase_report
from tests._helpers.recipes import run_recipe

pytestmark = pytest.mark.slow
WIDTHS, EPOCHS = (32, 128), 100  # the short size
NORMS = ("‖y − ŷ‖", "‖y − y_OLS‖", "‖ŷ − y_OLS‖")


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    return run_recipe(staircase_report.main, tmp_path_factory.mktemp("staircase"))


def _plain_training(width: int, epochs: int) -> float:
    """Seed 42, the inputs, then the model; full-batch SGD on the MSE; the last MSE."""
    torch.manual_seed(42)
    x = torch.randn(1000, 10)
    y = x[:, 0] * x[:, 1] * x[:, 2] * x[:, 3] + x[:, 0] * x[:, 1] * x[:, 2] + x[:, 0] * x[:, 1] + x[:, 0]
    layers = [torch.nn.Linear(10, width, bias=False), torch.nn.Linear(width, width, bias=False),
              torch.nn.Linear(width, 1, bias=False)]
    for layer in layers:
        torch.nn.init.normal_(layer.weight, std=1 / math.sqrt(layer.in_features))
    optimizer = torch.optim.SGD([p for layer in layers for p in layer.parameters()], lr=0.01)

    def loss() -> torch.Tensor:
        h = torch.relu(layers[1](torch.relu(layers[0](x))))
        return ((layers[2](h)[:, 0] / math.sqrt(width) - y) ** 2).mean()

    for _ in range(epochs):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    with torch.no_grad():
        return float(loss())


def _numpy_norms(folder, epoch: int, width: int) -> dict[str, float]:
    """The three norms from the checkpoint and the probe, by a NumPy forward pass and a
    ridge fit as a least-squares problem on [H; 0.1 I]."""
    state = load_file(str(folder / f"step_{epoch}.safetensors"))
    weights = {k: v.astype(np.float64) for k, v in state.items()}
    probe = np.load(folder / "probe.npz")
    x, y = probe["inputs"].astype(np.float64), probe["targets"][:, 0]
    h = np.maximum(np.maximum(x @ weights["layers.0.weight"].T, 0) @ weights["layers.1.weight"].T, 0)
    y_hat = (h @ weights["layers.2.weight"].T)[:, 0] / math.sqrt(width)
    coef = np.linalg.lstsq(np.vstack([h, 0.1 * np.eye(width)]),
                           np.concatenate([y, np.zeros(width)]), rcond=None)[0]
    y_ols = h @ coef
    return {"‖y − ŷ‖": float(np.linalg.norm(y - y_hat)),
            "‖y − y_OLS‖": float(np.linalg.norm(y - y_ols)),
            "‖ŷ − y_OLS‖": float(np.linalg.norm(y_hat - y_ols))}


def test_the_table_has_every_row(short_run):
    _out, record, rows = short_run
    expected = {f"final training MSE, width {w}" for w in WIDTHS}
    expected |= {f"{norm}, width {w}, epoch {e}" for norm in NORMS for w in WIDTHS for e in (0, EPOCHS)}
    expected |= {"final training MSE rises with width", "last ‖y − y_OLS‖ falls with width",
                 "last ‖ŷ − y_OLS‖ rises with width"}
    assert set(rows) == expected
    assert record["experiment"] == "E5" and record["size"] == "short"
    assert all(row["verdict"] in ("reproduced", "same direction", "differs") for row in rows.values())
    assert rows["final training MSE, width 32"]["paper"] == 1.7425
    assert rows["final training MSE, width 32"]["kind"] == "exact"


def test_final_mse_at_width_32_equals_an_independent_training(short_run):
    _out, _record, rows = short_run
    expected = _plain_training(32, EPOCHS)
    assert rows["final training MSE, width 32"]["toolkit"] == pytest.approx(expected, rel=1e-5)


def test_store_norms_equal_numpy_on_the_checkpoints(short_run):
    out, _record, rows = short_run
    for width in WIDTHS:
        for epoch in (0, EPOCHS):
            truth = _numpy_norms(out / f"width_{width}", epoch, width)
            for norm, value in truth.items():
                got = rows[f"{norm}, width {width}, epoch {epoch}"]["toolkit"]
                assert got == pytest.approx(value, rel=1e-4), (norm, width, epoch)
    # ‖y − ŷ‖² / n is the training MSE the loop recorded
    last = rows[f"‖y − ŷ‖, width 32, epoch {EPOCHS}"]["toolkit"]
    assert last**2 / 1000 == pytest.approx(rows["final training MSE, width 32"]["toolkit"], rel=1e-4)


def test_runs_are_compared_by_width(short_run):
    out, record, _rows = short_run
    combined = xr.open_dataset(out / "compare.nc")
    assert sorted(int(w) for w in combined["width"].values) == list(WIDTHS)
    assert "target_linearity" in combined and "run" in combined.dims
    assert (out / "compare" / "verdicts.md").is_file()
    png = out / record["figures"][0]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    combined.close()


@pytest.mark.full
def test_full_size_has_every_width(tmp_path):
    staircase_report.main([str(tmp_path), "--full"])
    rows = {r["quantity"]: r for r in json.loads((tmp_path / "results.json").read_text())["rows"]}
    for width in (32, 128, 512, 1024):
        assert math.isfinite(rows[f"final training MSE, width {width}"]["toolkit"])
        assert f"‖y − ŷ‖, width {width}, epoch 2000" in rows
    assert "width 1024: max |‖ŷ − y_OLS‖ − ‖y − ŷ‖| / ‖y − ŷ‖" in rows
