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
from flq_audit.errors import CaptureError, FlqAuditWarning, LayerNotFoundError, ProbeError
from flq_audit.models import build_from_spec

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


def _inputs(n: int, features: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, features)).astype(np.float32)


def _collect(model, layers, inputs, batch_size):
    batches = list(replay(model, layers, inputs, batch_size=batch_size, device="cpu"))
    merged = {name: np.concatenate([b[2][name] for b in batches]) for name in layers}
    return batches, merged


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
    inputs = _inputs(10, 6)
    layers = select_layers(model, None)

    batches, captured = _collect(model, layers, inputs, batch_size=4)

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
    inputs = _inputs(5, 6)
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
    list(replay(model, layers, _inputs(3, 6), batch_size=2, device="cpu"))
    assert all(not m._forward_pre_hooks for m in layers.values())


def test_replay_sets_eval_mode():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.9), nn.Linear(4, 2))
    model.train()
    inputs = _inputs(50, 4)
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
    inputs = _inputs(n, 2 * 6 * 6)
    layers = select_layers(model, None)

    _, captured = _collect(model, layers, inputs, batch_size=3)

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
    infos = layer_infos(model, select_layers(model, None), _inputs(4, 6))
    assert [(i.name, i.kind, i.width, i.gram_width) for i in infos] == [
        ("layers.0", "Linear", 6, 6), ("layers.1", "Linear", 8, 8), ("layers.2", "Linear", 7, 7),
    ]


def test_layer_infos_cnn_widths_differ_from_gram_widths():
    model = _cnn()
    infos = layer_infos(model, select_layers(model, None), _inputs(3, 72))
    assert [(i.name, i.kind, i.width, i.gram_width) for i in infos] == [
        ("features.0", "Conv2d", 2 * 6 * 6, 2 * 3 * 3),
        ("features.3", "Conv2d", 3 * 3 * 3, 3 * 3 * 3),
        ("classifier", "Linear", 4, 4),
    ]


def test_layer_infos_probe_that_does_not_fit():
    model = _mlp()
    with pytest.raises(ProbeError, match=r"probe inputs of shape \(5,\) per sample do not fit") as info:
        layer_infos(model, select_layers(model, None), _inputs(4, 5))
    assert "--probe and --model" in str(info.value)
    # the failed replay left no hooks behind
    assert all(not m._forward_pre_hooks for m in model.layers)


def test_layer_infos_layer_never_called():
    model = _mlp()
    layers = select_layers(model, None)
    layers["spare"] = nn.Linear(2, 2)  # selected but not part of the forward pass
    with pytest.raises(CaptureError, match="'spare' was never called"):
        layer_infos(model, layers, _inputs(2, 6))


# ------------------------------------------------------------------ devices
def test_resolve_device():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_resolve_device_cuda_without_gpu():
    with pytest.raises(CaptureError, match="asked for CUDA, but no CUDA device is available"):
        resolve_device("cuda:0")


# ------------------------------------------------------------------ parameters as layers
class _Ops(nn.Module):
    """One bare parameter per way of multiplying it into an input."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.fc = nn.Linear(4, 6)  # its weight stays the module layer "fc"
        self.A = nn.Parameter(torch.randn(5, 6, generator=g))        # h @ A.T
        self.B = nn.Parameter(torch.randn(5, 7, generator=g))        # h @ B
        self.C = nn.Parameter(torch.randn(3, 7, generator=g))        # F.linear
        self.D = nn.Parameter(torch.randn(2, 3, 4, generator=g))     # einsum, 2 input dims
        self.E = nn.Parameter(torch.randn(4, 5, generator=g))        # addmm(b, h, E.permute)
        self.F = nn.Parameter(torch.randn(3, 5, generator=g))        # F @ hᵀ
        self.emb = nn.Parameter(torch.randn(9, 4, generator=g))      # a lookup: not a layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.fc(x))
        h = torch.tanh(h @ self.A.T)
        h = torch.tanh(h @ self.B)
        h = torch.tanh(F.linear(h, self.C))                                  # (n, 3)
        pair = torch.stack([h, -h], dim=1)                                   # (n, 2, 3)
        h = torch.tanh(torch.einsum("...kj,okj->...o", pair, self.D.permute(2, 0, 1)))
        h = torch.tanh(torch.addmm(h.new_zeros(5), h, self.E.permute(0, 1)))  # (n, 5)
        return (self.F @ h.T).T + self.emb[0, :3]


def _ops_expected(model: _Ops, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each layer's input, by a forward pass written with explicit matrices."""
    with torch.no_grad():
        h0 = torch.tanh(F.linear(x, model.fc.weight, model.fc.bias))
        h1 = torch.tanh(h0 @ model.A.T)
        h2 = torch.tanh(h1 @ model.B)
        h3 = torch.tanh(h2 @ model.C.T)
        pair = torch.stack([h3, -h3], dim=1).reshape(len(x), -1)
        h4 = torch.tanh(pair @ model.D.permute(2, 0, 1).reshape(4, 6).T)
        h5 = torch.tanh(h4 @ model.E)
    return {"fc": x, "A": h0, "B": h1, "C": h2, "D": pair, "E": h4, "F": h5}


def test_parameter_layers_are_found_in_registration_order_with_their_input_space():
    model = _Ops()
    x = _inputs(7, 4)
    layers = select_layers(model, None, probe=x)
    assert list(layers) == ["fc", "A", "B", "C", "D", "E", "F"]
    assert layers["fc"] is model.fc
    infos = {i.name: (i.kind, i.width, i.gram_width) for i in layer_infos(model, layers, x)}
    assert infos == {
        "fc": ("Linear", 4, 4), "A": ("Parameter(in=1)", 6, 6), "B": ("Parameter(in=0)", 5, 5),
        "C": ("Parameter(in=1)", 7, 7), "D": ("Parameter(in=0,1)", 6, 6),
        "E": ("Parameter(in=0)", 4, 4), "F": ("Parameter(in=1)", 5, 5),
    }
    # the matrix (d_out × d_in) the Gram is formed from, written out by hand
    d_matrix = model.D.detach().permute(2, 0, 1).reshape(4, 6)
    by_hand = {"A": model.A, "B": model.B.T, "C": model.C, "D": d_matrix, "E": model.E.T,
               "F": model.F}
    for name, matrix in by_hand.items():
        torch.testing.assert_close(weight_matrix(layers[name]), matrix.detach(), rtol=0, atol=0)
        w = matrix.detach().double()
        np.testing.assert_allclose(gram(layers[name]), (w.T @ w).numpy(), rtol=1e-12)


def test_parameter_layers_replay_the_other_operand_of_their_op():
    model = _Ops()
    x = _inputs(7, 4)
    layers = select_layers(model, None, probe=x)
    _, captured = _collect(model, layers, x, batch_size=3)
    expected = _ops_expected(model, torch.from_numpy(x))
    for name, rows in expected.items():
        np.testing.assert_allclose(captured[name], rows.numpy(), rtol=1e-5, atol=1e-6,
                                   err_msg=name)


class _Looped(nn.Module):
    """One weight applied position by position (looped) or to all positions at once."""

    def __init__(self, looped: bool) -> None:
        super().__init__()
        self.looped = looped
        self.W = nn.Parameter(torch.randn(2, 3, generator=torch.Generator().manual_seed(0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = x.reshape(len(x), 4, 3)
        if self.looped:
            return torch.stack([seq[:, t] @ self.W.T for t in range(4)], dim=1)
        return seq @ self.W.T


def test_a_parameter_used_per_position_concatenates_its_inputs_like_one_batched_call():
    x = _inputs(5, 12)
    looped, batched = _Looped(True), _Looped(False)
    infos = [layer_infos(m, select_layers(m, None, probe=x), x) for m in (looped, batched)]
    assert infos[0] == infos[1]
    assert [(i.name, i.width, i.gram_width) for i in infos[0]] == [("W", 12, 3)]
    _, rows_looped = _collect(looped, select_layers(looped, None, probe=x), x, batch_size=2)
    _, rows_batched = _collect(batched, select_layers(batched, None, probe=x), x, batch_size=2)
    np.testing.assert_array_equal(rows_looped["W"], x)
    np.testing.assert_array_equal(rows_batched["W"], x)


class _Unusable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.twice = nn.Parameter(torch.randn(4, 4))    # contracted on dim 1, then on dim 0
        self.no_rows = nn.Parameter(torch.randn(4, 4))  # multiplies a buffer: no sample axis
        self.register_buffer("basis", torch.randn(6, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = (x @ self.twice.T) @ self.twice
        return h + (self.basis @ self.no_rows.T).sum()


def test_parameters_that_are_not_layers_are_refused_with_the_reason():
    model, x = _Unusable(), _inputs(5, 4)
    with pytest.raises(LayerNotFoundError) as info:
        select_layers(model, None, probe=x)
    text = str(info.value)
    assert "twice: its ops contract different dimensions (Parameter(in=0), Parameter(in=1))" in text
    assert "no_rows: the operand it multiplies has 6 rows for a batch of 3 samples" in text
    with pytest.raises(LayerNotFoundError, match=r"'twice' matches no weight layer.*twice: its ops"):
        select_layers(model, ["twice"], probe=x)


def test_without_a_probe_the_candidates_are_listed_by_shape():
    with pytest.raises(LayerNotFoundError, match=r"could be layers: twice: shape \(4, 4\)") as info:
        select_layers(_Unusable(), None)
    assert "--layers W_in" in info.value.hint


def test_float64_replay_converts_the_model_and_casts_the_inputs():
    model = _Ops()
    x = _inputs(6, 4)
    layers = select_layers(model, None, probe=x)
    (_, _, rows), = replay(model, layers, x, batch_size=6, device="cpu", dtype=np.float64)
    assert model.A.dtype == torch.float64 and layers["A"].parameter is model.A
    expected = _ops_expected(model, torch.from_numpy(x).double())
    for name, want in expected.items():
        assert rows[name].dtype == np.float64
        np.testing.assert_allclose(rows[name], want.numpy(), rtol=1e-13, atol=1e-14)


class _PerToken(nn.Module):
    """A weight W (h × d) applied to every token of x (batch, tokens, d), written one way."""

    def __init__(self, apply) -> None:
        super().__init__()
        self.apply_weight = apply
        self.W = nn.Parameter(torch.randn(5, 3, generator=torch.Generator().manual_seed(2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply_weight(x.reshape(len(x), 4, 3), self.W)


@pytest.mark.parametrize("apply", [
    lambda x, w: x @ w.T,
    lambda x, w: F.linear(x, w),
    lambda x, w: torch.matmul(x, w.transpose(0, 1)),
    lambda x, w: x @ w.t().contiguous(),
    lambda x, w: torch.einsum("btd,hd->bth", x, w),
    lambda x, w: torch.einsum("hd,btd->bth", w, x),
    lambda x, w: torch.einsum("btd,hd", x, [w][0]),
    lambda x, w: torch.einsum("...d,dh->...h", x, w.T),
    lambda x, w: (w @ x.transpose(1, 2)).transpose(1, 2),
], ids=["matmul-T", "linear", "matmul-transpose", "t-contiguous", "einsum", "einsum-w-first",
        "einsum-implicit", "einsum-ellipsis", "w-at-x"])
def test_every_way_of_writing_a_per_token_layer_reads_the_same_input_space(apply):
    x = _inputs(6, 12)
    model = _PerToken(apply)
    layers = select_layers(model, None, probe=x)
    (info,) = layer_infos(model, layers, x)
    assert (info.name, info.kind, info.width, info.gram_width) == ("W", "Parameter(in=1)", 12, 3)
    _, rows = _collect(model, layers, x, batch_size=4)
    np.testing.assert_array_equal(rows["W"], x)


class _ModeHostile(nn.Module):
    """A forward that fails under any torch function mode (and only there)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.table = nn.Parameter(torch.randn(3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.overrides._is_torch_function_mode_enabled():
            raise RuntimeError("custom kernel: no function modes")
        return self.fc(x) + self.table.sum()


def test_a_forward_that_refuses_function_modes_keeps_its_module_layers():
    with pytest.warns(FlqAuditWarning, match="parameters were not checked for use as layers"):
        layers = select_layers(_ModeHostile(), None, probe=_inputs(4, 4))
    assert list(layers) == ["fc"]


def test_a_probe_that_does_not_fit_fails_discovery_as_a_probe_error():
    model = _Ops()
    with pytest.raises(ProbeError, match=r"probe inputs of shape \(5,\) per sample do not fit"):
        select_layers(model, None, probe=_inputs(4, 5))
