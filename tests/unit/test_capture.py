"""capture: layer discovery and selection, replayed activations, Gram matrices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flq_audit.capture import (
    discover_layers,
    gram,
    layer_infos,
    replay,
    resolve_device,
    select_layers,
    weight_matrix,
)
from flq_audit.errors import CaptureError, LayerNotFoundError, ProbeError
from flq_audit.models import build_from_spec
from tests._helpers.replays import collect, random_inputs

MLP_SPEC = {"type": "mlp", "in_features": 6, "widths": [8, 7], "out_features": 3,
            "activation": "gelu", "bias": True}
CNN_SPEC = {"type": "cnn", "in_channels": 2, "input_size": [6, 6], "channels": [3, 4],
            "kernel_sizes": [3, 3], "padding": [1, 0], "pool_after": [0],
            "activation": "relu", "num_classes": 5, "bias": True}


def _mlp():
    torch.manual_seed(0)
    return build_from_spec(MLP_SPEC)


def _cnn():
    torch.manual_seed(0)
    return build_from_spec(CNN_SPEC)


# ------------------------------------------------------------------ discovery and selection
def test_discover_layers_mlp():
    model = _mlp()
    found = discover_layers(model)
    assert list(found) == ["layers.0", "layers.1", "layers.2"]
    assert found["layers.1"] is model.layers[1]


def test_discover_layers_cnn():
    model = _cnn()
    found = discover_layers(model)
    # ReLU (1, 4) and MaxPool (2) carry no weight
    assert list(found) == ["features.0", "features.3", "classifier"]
    assert [type(m).__name__ for m in found.values()] == ["Conv2d", "Conv2d", "Linear"]


def test_discover_layers_includes_conv1d_and_nested_names():
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Sequential(nn.LayerNorm(3), nn.Linear(3, 2)))
    assert list(discover_layers(model)) == ["0", "1.1"]


def test_select_all_when_no_pattern():
    model = _mlp()
    assert list(select_layers(model, None)) == ["layers.0", "layers.1", "layers.2"]
    assert list(select_layers(model, [])) == ["layers.0", "layers.1", "layers.2"]


@pytest.mark.parametrize(
    ("patterns", "expected"),
    [
        (["layers.*"], ["layers.0", "layers.1", "layers.2"]),
        (["layers.1"], ["layers.1"]),
        (["layers.[02]"], ["layers.0", "layers.2"]),
        # order follows the model, not the patterns; duplicates collapse
        (["layers.2", "layers.0", "layers.?"], ["layers.0", "layers.1", "layers.2"]),
    ],
)
def test_select_layers_globs(patterns, expected):
    assert list(select_layers(_mlp(), patterns)) == expected


def test_select_layers_cnn_glob():
    assert list(select_layers(_cnn(), ["features.*"])) == ["features.0", "features.3"]


def test_select_layers_no_match_lists_available():
    with pytest.raises(
        LayerNotFoundError,
        match=r"'fc\*' matches no weight layer; available: \['layers\.0', 'layers\.1', 'layers\.2'\]",
    ) as info:
        select_layers(_mlp(), ["layers.0", "fc*"])
    assert info.value.layer == "fc*"
    assert isinstance(info.value, LookupError)


def test_select_layers_model_without_weights():
    with pytest.raises(LayerNotFoundError, match="no Linear or Conv layers"):
        select_layers(nn.Sequential(nn.ReLU()), None)


# ------------------------------------------------------------------ replay: MLP
def test_replay_mlp_matches_manual_forward():
    model = _mlp()
    inputs = random_inputs(10, 6)
    layers = select_layers(model, None)

    batches, captured = collect(model, layers, inputs, batch_size=4)

    assert [(start, stop) for start, stop, _ in batches] == [(0, 4), (4, 8), (8, 10)]
    x = torch.from_numpy(inputs)
    w0, b0 = model.layers[0].weight, model.layers[0].bias
    w1, b1 = model.layers[1].weight, model.layers[1].bias
    with torch.no_grad():
        h1 = F.gelu(F.linear(x, w0, b0))
        h2 = F.gelu(F.linear(h1, w1, b1))
    assert {k: v.shape for k, v in captured.items()} == {
        "layers.0": (10, 6), "layers.1": (10, 8), "layers.2": (10, 7)}
    np.testing.assert_array_equal(captured["layers.0"], inputs)
    np.testing.assert_allclose(captured["layers.1"], h1.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(captured["layers.2"], h2.numpy(), rtol=1e-5, atol=1e-6)
    assert all(v.dtype == np.float32 for v in captured.values())


def test_replay_only_selected_layers_and_dtype():
    model = _mlp()
    inputs = random_inputs(5, 6)
    layers = select_layers(model, ["layers.1"])

    batches = list(replay(model, layers, inputs, batch_size=8, device="cpu", dtype=np.float16))

    assert len(batches) == 1
    start, stop, arrays = batches[0]
    assert (start, stop) == (0, 5)
    assert list(arrays) == ["layers.1"]
    assert arrays["layers.1"].dtype == np.float16
    with torch.no_grad():
        h1 = F.gelu(model.layers[0](torch.from_numpy(inputs))).numpy()
    np.testing.assert_allclose(arrays["layers.1"], h1.astype(np.float16), rtol=1e-3, atol=1e-3)


def test_replay_removes_its_hooks():
    model = _mlp()
    layers = select_layers(model, None)
    list(replay(model, layers, random_inputs(3, 6), batch_size=2, device="cpu"))
    assert all(not m._forward_pre_hooks for m in layers.values())


def test_replay_sets_eval_mode():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.9), nn.Linear(4, 2))
    model.train()
    inputs = random_inputs(50, 4)
    layers = select_layers(model, ["2"])

    (_, _, arrays), = replay(model, layers, inputs, batch_size=50, device="cpu")

    assert not model.training
    with torch.no_grad():
        expected = model[0](torch.from_numpy(inputs)).numpy()  # dropout is identity in eval
    np.testing.assert_allclose(arrays["2"], expected, rtol=1e-6)


# ------------------------------------------------------------------ replay: CNN
def test_replay_cnn_matches_manual_forward():
    model = _cnn()
    n = 7
    inputs = random_inputs(n, 2 * 6 * 6)
    layers = select_layers(model, None)

    _, captured = collect(model, layers, inputs, batch_size=3)

    conv0, conv1 = model.features[0], model.features[3]
    x = torch.from_numpy(inputs).reshape(n, 2, 6, 6)
    with torch.no_grad():
        a1 = F.max_pool2d(F.relu(F.conv2d(x, conv0.weight, conv0.bias, padding=1)), 2)
        a2 = F.relu(F.conv2d(a1, conv1.weight, conv1.bias, padding=0))
    # conv input flattened per sample: the raw images
    np.testing.assert_array_equal(captured["features.0"], x.reshape(n, -1).numpy())
    np.testing.assert_array_equal(captured["features.0"], inputs.reshape(n, -1))
    assert captured["features.3"].shape == (n, 3 * 3 * 3)
    np.testing.assert_allclose(captured["features.3"], a1.reshape(n, -1).numpy(),
                               rtol=1e-5, atol=1e-6)
    assert captured["classifier"].shape == (n, 4 * 1 * 1)
    np.testing.assert_allclose(captured["classifier"], a2.reshape(n, -1).numpy(),
                               rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ gram and weights
def test_gram_linear():
    model = _mlp()
    w = model.layers[1].weight.detach().double()
    g = gram(model.layers[1])
    assert g.dtype == np.float64
    assert g.shape == (8, 8)
    np.testing.assert_allclose(g, (w.T @ w).numpy(), rtol=1e-12)


def test_gram_conv2d():
    conv = _cnn().features[3]
    w = conv.weight.detach().to(torch.float64)
    c_out = w.shape[0]
    flat = w.reshape(c_out, -1)

    g = gram(conv)

    assert g.dtype == np.float64
    assert g.shape == (3 * 3 * 3, 3 * 3 * 3)
    np.testing.assert_allclose(g, (flat.T @ flat).numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(g, g.T)


def test_gram_with_explicit_weight_is_float64_even_from_half():
    conv = _cnn().features[0]
    half = conv.weight.detach().to(torch.bfloat16)
    flat = half.to(torch.float64).reshape(half.shape[0], -1)
    np.testing.assert_array_equal(gram(conv, half), (flat.T @ flat).numpy())


class Conv1D(nn.Module):
    """transformers' Conv1D layout: weight stored as (d_in, d_out)."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_in, d_out))

    def forward(self, x):
        return x @ self.weight


def test_transformers_conv1d_is_transposed():
    layer = Conv1D(5, 3)
    assert list(discover_layers(nn.Sequential(layer))) == ["0"]
    assert weight_matrix(layer).shape == (3, 5)
    w = layer.weight.detach().double()
    np.testing.assert_allclose(gram(layer), (w @ w.T).numpy())


# ------------------------------------------------------------------ layer_infos
def test_layer_infos_mlp():
    model = _mlp()
    infos = layer_infos(model, select_layers(model, None), random_inputs(4, 6))
    assert [(i.name, i.kind, i.width, i.gram_width) for i in infos] == [
        ("layers.0", "Linear", 6, 6), ("layers.1", "Linear", 8, 8), ("layers.2", "Linear", 7, 7),
    ]


def test_layer_infos_cnn_widths_differ_from_gram_widths():
    model = _cnn()
    infos = layer_infos(model, select_layers(model, None), random_inputs(3, 72))
    assert [(i.name, i.kind, i.width, i.gram_width) for i in infos] == [
        ("features.0", "Conv2d", 2 * 6 * 6, 2 * 3 * 3),
        ("features.3", "Conv2d", 3 * 3 * 3, 3 * 3 * 3),
        ("classifier", "Linear", 4, 4),
    ]


def test_layer_infos_probe_that_does_not_fit():
    model = _mlp()
    with pytest.raises(ProbeError, match=r"probe inputs of shape \(5,\) per sample do not fit") as info:
        layer_infos(model, select_layers(model, None), random_inputs(4, 5))
    assert "--probe and --model" in str(info.value)
    # the failed replay left no hooks behind
    assert all(not m._forward_pre_hooks for m in model.layers)


def test_layer_infos_layer_never_called():
    model = _mlp()
    layers = select_layers(model, None)
    layers["spare"] = nn.Linear(2, 2)  # selected but not part of the forward pass
    with pytest.raises(CaptureError, match="'spare' was never called"):
        layer_infos(model, layers, random_inputs(2, 6))


# ------------------------------------------------------------------ devices
def test_resolve_device():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_resolve_device_cuda_without_gpu():
    with pytest.raises(CaptureError, match="asked for CUDA, but no CUDA device is available"):
        resolve_device("cuda:0")


def test_the_old_parameter_layer_path_warns_and_gives_the_capture_package_objects(monkeypatch):
    import sys

    from flq_audit.capture import params

    monkeypatch.delitem(sys.modules, "flq_audit.capture_params", raising=False)
    with pytest.warns(DeprecationWarning, match="flq_audit.capture_params moved to "
                                               "flq_audit.capture.params") as caught:
        __import__("flq_audit.capture_params")  # as an import statement does
    old = sys.modules["flq_audit.capture_params"]
    assert old.ParameterUses is params.ParameterUses and old.layers_of is params.layers_of
    assert caught[0].filename == __file__


def test_the_capture_package_gram_is_the_store_gram():
    """The capture side (torch) and the store (NumPy) form one WᵀW."""
    from flq_audit._gram_maths import gram_of_matrix as store_gram
    from flq_audit.capture import as_matrix, gram_of_matrix

    w = torch.randn(5, 3, 2, 2, dtype=torch.float64)
    matrix = as_matrix(w, conv1d=False)
    flat = w.reshape(5, 12).numpy()
    np.testing.assert_array_equal(gram_of_matrix(matrix), store_gram(matrix))
    np.testing.assert_allclose(gram_of_matrix(matrix), flat.T @ flat, rtol=1e-14)
