"""Bare-parameter models (``x @ W.T``, ``x @ W``, ``einsum``) audited as published.

The same weights are audited twice: as the research code writes them (``nn.Parameter``
attributes, a buffer, checkpoints nested under a ``model`` key) and rewritten with
``nn.Linear``. Activations, Grams and Target Linearity must agree.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from safetensors.torch import save_file

from flq_audit import api
from flq_audit.options import CaptureOptions
from tests._helpers.cli import invoke, run_cli

D_IN, D_H, CLASSES, N = 10, 16, 5, 60
PAIRS = {"W_in": "fc_in", "W_hid": "fc_hid", "W_out": "fc_out"}

MODELS = textwrap.dedent('''
    import torch
    from torch import nn

    D_IN, D_H, CLASSES = 10, 16, 5

    class GrokkingMLP(nn.Module):
        """As research code writes it: bare parameters, a buffer, matmul and einsum."""

        def __init__(self):
            super().__init__()
            self.W_in = nn.Parameter(torch.zeros(D_H, D_IN))
            self.W_hid = nn.Parameter(torch.zeros(D_H, D_H))
            self.W_out = nn.Parameter(torch.zeros(D_H, CLASSES))  # used as h @ W_out
            self.register_buffer("input_scale", torch.ones(D_IN))

        def forward(self, x):
            h = torch.relu((x * self.input_scale) @ self.W_in.T)
            h = torch.relu(torch.einsum("bi,oi->bo", h, self.W_hid))
            return h @ self.W_out

    class LinearMLP(nn.Module):
        """The same network written with nn.Linear."""

        def __init__(self):
            super().__init__()
            self.fc_in = nn.Linear(D_IN, D_H, bias=False)
            self.fc_hid = nn.Linear(D_H, D_H, bias=False)
            self.fc_out = nn.Linear(D_H, CLASSES, bias=False)
            self.register_buffer("input_scale", torch.ones(D_IN))

        def forward(self, x):
            h = torch.relu(self.fc_in(x * self.input_scale))
            h = torch.relu(self.fc_hid(h))
            return self.fc_out(h)

    class NoLayers(nn.Module):
        """Parameters that no op multiplies into the input."""

        def __init__(self):
            super().__init__()
            self.W_gate = nn.Parameter(torch.ones(D_IN, 3))

        def forward(self, x):
            return x * self.W_gate.sum(1)

    def bare():
        return GrokkingMLP()

    def linear():
        return LinearMLP()

    def nothing():
        return NoLayers()
''')


def _weights(step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return {
        "W_in": torch.randn(D_H, D_IN, generator=g) / 3,
        "W_hid": torch.randn(D_H, D_H, generator=g) / 4,
        "W_out": torch.randn(D_H, CLASSES, generator=g) / 4,
        "input_scale": torch.linspace(0.5, 1.5, D_IN),
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two folders of the same three checkpoints: nested pickles and nn.Linear safetensors."""
    root = tmp_path_factory.mktemp("param_layers")
    (root / "models.py").write_text(MODELS)
    bare, linear = root / "bare", root / "linear"
    bare.mkdir()
    linear.mkdir()
    for step in (0, 5, 10):
        w = _weights(step)
        torch.save({"model": w, "epoch": step, "optimizer": {"lr": 1e-3}},
                   bare / f"epoch_{step}.pt")
        save_file({"fc_in.weight": w["W_in"], "fc_hid.weight": w["W_hid"],
                   "fc_out.weight": w["W_out"].T.contiguous(),
                   "input_scale": w["input_scale"]}, str(linear / f"epoch_{step}.safetensors"))
    rng = np.random.default_rng(0)
    np.savez(root / "probe.npz", inputs=rng.normal(size=(N, D_IN)).astype(np.float32),
             targets=rng.integers(0, CLASSES, N), num_classes=np.int64(CLASSES))
    return {"root": root, "bare": bare, "linear": linear}


def _audit_linear(runs: dict[str, Path], out: Path, dtype: str) -> xr.Dataset:
    api.audit(str(runs["linear"]), model=f"{runs['root'] / 'models.py'}:linear",
              probe=str(runs["root"] / "probe.npz"), out=out,
              capture=CaptureOptions(activation_dtype=dtype))  # type: ignore[arg-type]
    return xr.open_zarr(out)


def _values(ds: xr.Dataset, var: str, layer: str) -> np.ndarray:
    return ds[var].sel(layer=layer).values


def test_bare_parameter_model_equals_its_linear_form_in_float64(runs, tmp_path):
    bare_store = tmp_path / "bare.zarr"
    audit = run_cli(runs["bare"], "--model", f"{runs['root'] / 'models.py'}:bare",
                    "--probe", runs["root"] / "probe.npz", "--out", bare_store,
                    "--activation-dtype", "float64")
    assert audit.returncode == 0, audit.stderr
    api.compute_metrics(bare_store, metrics=("tl", "surrogate"))
    bare = xr.open_zarr(bare_store)
    linear_store = tmp_path / "linear.zarr"
    _audit_linear(runs, linear_store, "float64")
    api.compute_metrics(linear_store, metrics=("tl", "surrogate"))
    linear = xr.open_zarr(linear_store)

    assert list(bare.layer.values) == list(PAIRS)
    assert list(bare.layer_kind.values) == ["Parameter(in=1)", "Parameter(in=1)",
                                            "Parameter(in=0)"]
    assert list(bare.step.values) == [0, 5, 10]
    for param, module in PAIRS.items():
        for var in ("activations", "target_linearity", "surrogate", "alignment"):
            np.testing.assert_allclose(_values(bare, var, param), _values(linear, var, module),
                                       rtol=1e-12, atol=1e-13, err_msg=f"{var} {param}")
        for step in (0, 5, 10):
            np.testing.assert_allclose(bare.flq.gram(step, param).values,
                                       linear.flq.gram(step, module).values,
                                       rtol=1e-12, atol=1e-13, err_msg=f"gram {param}")
    # the Gram of x @ W_out lives in W_out's first dimension: W_out W_outᵀ
    w_out = _weights(10)["W_out"].double().numpy()
    np.testing.assert_allclose(bare.flq.gram(10, "W_out").values, w_out @ w_out.T, rtol=1e-12)
    assert bare.activations.dtype == np.float64
    assert all(bare[name].dtype == np.float64 for name in ("gram", "gram_factor") if name in bare)


def test_float32_activations_are_bitwise_those_of_the_linear_form(runs, tmp_path):
    root = runs["root"]
    api.audit(str(runs["bare"]), model=f"{root / 'models.py'}:bare",
              probe=str(root / "probe.npz"), out=tmp_path / "bare.zarr")
    bare = xr.open_zarr(tmp_path / "bare.zarr")
    linear = _audit_linear(runs, tmp_path / "linear.zarr", "float32")
    # x @ W.T and nn.Linear run the same matmul: bitwise equal inputs of W_in and W_hid
    for param in ("W_in", "W_hid"):
        np.testing.assert_array_equal(_values(bare, "activations", param),
                                      _values(linear, "activations", PAIRS[param]))
    # einsum and nn.Linear round differently in the last bits
    np.testing.assert_allclose(_values(bare, "activations", "W_out"),
                               _values(linear, "activations", "fc_out"), rtol=1e-6, atol=1e-7)
    for param, module in PAIRS.items():
        np.testing.assert_array_equal(_values(bare, "gram", param), _values(linear, "gram", module))


def test_layers_take_parameter_names_and_globs(runs, tmp_path):
    root = runs["root"]
    plan = api.plan_audit(str(runs["bare"]), model=f"{root / 'models.py'}:bare",
                          probe=str(root / "probe.npz"), out=tmp_path / "s.zarr",
                          capture=CaptureOptions(layers=("W_o*", "W_in")))
    assert [(li.name, li.kind, li.width, li.gram_width) for li in plan.layers] == [
        ("W_in", "Parameter(in=1)", D_IN, D_IN), ("W_out", "Parameter(in=0)", D_H, D_H)]


def test_a_model_with_nothing_capturable_names_its_parameters(runs, tmp_path):
    root = runs["root"]
    result = invoke("audit", runs["bare"], "--model", f"{root / 'models.py'}:nothing",
                    "--probe", root / "probe.npz", "--out", tmp_path / "s.zarr")
    assert result.exit_code == 4, result.output
    text = " ".join(result.output.split())
    assert "no Linear or Conv layers" in text
    assert "W_gate: not multiplied into the input by matmul, F.linear or einsum" in text
    assert "--layers W_in" in text and "x @ W.T" in text
    assert "Traceback" not in result.output


def test_the_fl_residual_refuses_parameter_layers_before_any_checkpoint_is_read(runs, tmp_path):
    from flq_audit.errors import CaptureError
    from flq_audit.options import FLOptions

    root = runs["root"]
    with pytest.raises(CaptureError, match=r"not the parameter layers \['W_in', 'W_hid', 'W_out'\]"):
        api.plan_audit(str(runs["bare"]), model=f"{root / 'models.py'}:bare",
                       probe=str(root / "probe.npz"), out=tmp_path / "s.zarr",
                       fl=FLOptions.from_files("ce", "0.1", "full"))
