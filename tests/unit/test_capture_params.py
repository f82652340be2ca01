"""capture: bare parameters as layers (found by the ops that read them) and float64 replay."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flq_audit.capture import gram, layer_infos, replay, select_layers, weight_matrix
from flq_audit.errors import CaptureError, FlqAuditWarning, LayerNotFoundError, ProbeError
from tests._helpers.replays import collect, random_inputs


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
    x = random_inputs(7, 4)
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
    x = random_inputs(7, 4)
    layers = select_layers(model, None, probe=x)
    _, captured = collect(model, layers, x, batch_size=3)
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
    x = random_inputs(5, 12)
    looped, batched = _Looped(True), _Looped(False)
    infos = [layer_infos(m, select_layers(m, None, probe=x), x) for m in (looped, batched)]
    assert infos[0] == infos[1]
    assert [(i.name, i.width, i.gram_width) for i in infos[0]] == [("W", 12, 3)]
    _, rows_looped = collect(looped, select_layers(looped, None, probe=x), x, batch_size=2)
    _, rows_batched = collect(batched, select_layers(batched, None, probe=x), x, batch_size=2)
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
    model, x = _Unusable(), random_inputs(5, 4)
    with pytest.raises(LayerNotFoundError) as info:
        select_layers(model, None, probe=x)
    text = str(info.value)
    assert "twice: its ops contract different dimensions (Parameter(in=0), Parameter(in=1))" in text
    assert "no_rows: the operand it multiplies has 6 rows for a batch of 3 samples" in text
    with pytest.raises(LayerNotFoundError, match=r"'twice' matches no weight layer.*twice: its ops"):
        select_layers(model, ["twice"], probe=x)


def test_without_a_probe_the_candidates_are_listed_by_shape():
    expected = r"could be layers: twice \(4, 4\), no_rows \(4, 4\)"
    with pytest.raises(LayerNotFoundError, match=expected) as info:
        select_layers(_Unusable(), None)
    assert "--layers W_in" in info.value.hint


def test_float64_replay_casts_the_inputs_of_a_float64_model_and_leaves_it_as_it_is():
    model = _Ops().double()
    x = random_inputs(6, 4)
    layers = select_layers(model, None, probe=x)
    (_, _, rows), = replay(model, layers, x, batch_size=6, device="cpu", dtype=np.float64)
    assert model.A.dtype == torch.float64 and layers["A"].parameter is model.A
    expected = _ops_expected(model, torch.from_numpy(x).double())
    for name, want in expected.items():
        assert rows[name].dtype == np.float64
        np.testing.assert_allclose(rows[name], want.numpy(), rtol=1e-13, atol=1e-14)


def test_float64_replay_refuses_a_float32_model_and_does_not_convert_it():
    model = _Ops()
    x = random_inputs(6, 4)
    layers = select_layers(model, None, probe=x)
    with pytest.raises(CaptureError, match="a float64 replay needs a float64 model"):
        list(replay(model, layers, x, batch_size=6, device="cpu", dtype=np.float64))
    assert model.A.dtype == torch.float32


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
    x = random_inputs(6, 12)
    model = _PerToken(apply)
    layers = select_layers(model, None, probe=x)
    (info,) = layer_infos(model, layers, x)
    assert (info.name, info.kind, info.width, info.gram_width) == ("W", "Parameter(in=1)", 12, 3)
    _, rows = collect(model, layers, x, batch_size=4)
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
        layers = select_layers(_ModeHostile(), None, probe=random_inputs(4, 4))
    assert list(layers) == ["fc"]


def test_a_probe_that_does_not_fit_fails_discovery_as_a_probe_error():
    model = _Ops()
    with pytest.raises(ProbeError, match=r"probe inputs of shape \(5,\) per sample do not fit"):
        select_layers(model, None, probe=random_inputs(4, 5))
