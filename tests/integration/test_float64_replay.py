"""``--activation-dtype float64``: the probe replays in float64 and the metrics follow.

Expected values come from a float64 forward pass and float64 least squares written here in
numpy, from the checkpoint files' own tensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from safetensors.torch import load_file, save_file

from flq_audit.models import build_from_spec
from flq_audit.options import CaptureOptions
from tests._helpers.cli import run_cli

SPEC = {"type": "mlp", "in_features": 7, "widths": [12, 9], "out_features": 4,
        "activation": "tanh", "bias": True}
LAYERS = ("layers.0", "layers.1", "layers.2")
STEPS = (0, 3)
N = 80


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """float64 checkpoints and a float64 probe: nothing is float32 unless the audit rounds it."""
    root = tmp_path_factory.mktemp("f64")
    for step in STEPS:
        torch.manual_seed(step)
        model = build_from_spec(SPEC).double()
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()},
                  str(root / f"step_{step}.safetensors"))
    rng = np.random.default_rng(3)
    np.savez(root / "probe.npz", inputs=rng.normal(size=(N, 7)),
             targets=rng.integers(0, 4, N), num_classes=np.int64(4))
    (root / "model_spec.json").write_text(json.dumps(SPEC))
    return root


def _layer_inputs(state: dict[str, torch.Tensor], x: np.ndarray) -> dict[str, np.ndarray]:
    """The input of each Linear layer, by a numpy float64 forward pass."""
    inputs, h = {}, x
    for i, name in enumerate(LAYERS):
        inputs[name] = h
        w, b = (state[f"{name}.{p}"].numpy() for p in ("weight", "bias"))
        h = h @ w.T + b
        if i < len(LAYERS) - 1:
            h = np.tanh(h)
    return inputs


def _expected_metrics(h: np.ndarray, w: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """TL by np.linalg.lstsq; surrogate and alignment by their closed forms (concepts.md)."""
    yc = y - y.mean(axis=0)
    coef, *_ = np.linalg.lstsq(h, yc, rcond=None)
    tl = 1 - ((yc - h @ coef) ** 2).sum() / (yc**2).sum()
    z = h @ w.T
    surrogate = np.trace(yc.T @ z @ z.T @ yc)
    alignment = surrogate / (np.linalg.norm(z.T @ z) * np.linalg.norm(yc.T @ yc))
    return {"target_linearity": tl, "surrogate": surrogate, "alignment": alignment}


def test_float64_replay_equals_an_independent_float64_forward(run, tmp_path):
    store = tmp_path / "f64.zarr"
    audit = run_cli(run, "--out", store, "--activation-dtype", "float64")
    assert audit.returncode == 0, audit.stderr
    metrics = run_cli("metrics", store, "--metric", "tl,surrogate")
    assert metrics.returncode == 0, metrics.stderr
    ds = xr.open_zarr(store)
    assert ds.activations.dtype == np.float64 and ds.gram.dtype == np.float64
    assert ds.gram_factor.dtype == np.float64  # the layers with fewer rows than columns
    probe = np.load(run / "probe.npz")
    x, labels = probe["inputs"], probe["targets"]
    y = np.eye(4)[labels]
    for step in STEPS:
        state = load_file(str(run / f"step_{step}.safetensors"))
        expected = _layer_inputs(state, x)
        for name in LAYERS:
            width = int(ds.width.sel(layer=name))
            h = ds.activations.sel(step=step, layer=name).values[:, :width]
            np.testing.assert_allclose(h, expected[name], rtol=1e-12, atol=1e-12)
            w = state[f"{name}.weight"].numpy()
            gram = ds.flq.gram(step, name).values
            np.testing.assert_allclose(gram, w.T @ w, rtol=1e-12, atol=1e-14)
            for var, value in _expected_metrics(expected[name], w, y).items():
                stored = float(ds[var].sel(step=step, layer=name))
                assert stored == pytest.approx(value, rel=1e-9, abs=1e-12), (var, step, name)
    # a float32 replay could not have produced these rows: they are not float32 numbers
    deep = ds.activations.sel(step=STEPS[-1], layer="layers.2").values[:, :9]
    assert not np.array_equal(deep, deep.astype(np.float32).astype(np.float64))


def test_float64_activations_store_float64_grams():
    assert CaptureOptions(activation_dtype="float64").gram_dtype == "float64"
    assert CaptureOptions(activation_dtype="float16").gram_dtype == "float32"


def test_float16_capture_still_rounds_a_float32_replay(run, tmp_path):
    from flq_audit import api

    api.audit(str(run), out=tmp_path / "f16.zarr",
              capture=CaptureOptions(activation_dtype="float16", layers=("layers.1",)))
    ds = xr.open_zarr(tmp_path / "f16.zarr")
    assert ds.activations.dtype == np.float16
    state = load_file(str(run / f"step_{STEPS[0]}.safetensors"))
    expected = _layer_inputs(state, np.load(run / "probe.npz")["inputs"])["layers.1"]
    h = ds.activations.sel(step=STEPS[0], layer="layers.1").values.astype(np.float64)
    np.testing.assert_allclose(h, expected, rtol=2e-3, atol=2e-3)
