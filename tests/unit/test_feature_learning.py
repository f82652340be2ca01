"""Golden checks: FL identity, exact SGD remainder, momentum."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flq_audit.audit.extensions.fl import _patches, _rows, fl_quantities
from flq_audit.errors import CaptureError, OptionError, ProbeError
from flq_audit.options import FLOptions


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.GELU(), nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, 3))


def _data(n: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 5)), rng.integers(0, 3, n)


def _sgd_step(model: nn.Module, x: np.ndarray, y: np.ndarray, optimizer: torch.optim.Optimizer):
    optimizer.zero_grad()
    F.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y)).backward()
    optimizer.step()


def _run(model, x, y, lr, before, after):
    layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)}
    model.load_state_dict(before)
    return fl_quantities(
        model, layers, x, np.eye(3)[y], y, before,
        {n: after[f"{n}.weight"] for n in layers}, loss="ce", lr=lr,
    )


def _one_step(lr: float, optimizer_cls=torch.optim.SGD, steps: int = 1, **kwargs):
    model = _mlp().double()
    x, y = _data()
    optimizer = optimizer_cls(model.parameters(), lr=lr, **kwargs)
    for _ in range(steps - 1):
        _sgd_step(model, x, y, optimizer)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _sgd_step(model, x, y, optimizer)
    after = {k: v.clone() for k, v in model.state_dict().items()}
    return model, x, y, before, after, optimizer


def test_plain_sgd_remainder_is_exact():
    model, x, y, before, after, _ = _one_step(0.1)
    results = _run(model, x, y, 0.1, before, after)
    assert set(results) == {"0", "2", "4"}
    for result in results.values():
        assert result.residual < 1e-12
        assert result.r_step < 1e-12
        assert 0 < result.r_vcs < 0.5


def test_vcs_matches_an_independent_per_sample_sum():
    # VCS = Σ_i [(h_i − η g_i)(h_i − η g_i)ᵀ − h_i h_iᵀ] with g_i = Wᵀ δ_i, from autograd alone.
    model, x, y, before, after, _ = _one_step(0.05)
    model.load_state_dict(before)
    lr = 0.05
    inputs = torch.from_numpy(x).requires_grad_(False)
    h1 = model[1](model[0](inputs)).detach().requires_grad_(True)  # input of layer "2"
    logits = model[4](model[3](model[2](h1)))
    F.cross_entropy(logits, torch.from_numpy(y)).backward()
    g = h1.grad  # ∂L/∂h through layer 2 only (plain MLP: it is the only consumer)
    expected = sum(
        torch.outer(h - lr * gi, h - lr * gi) - torch.outer(h, h)
        for h, gi in zip(h1.detach(), g, strict=True)
    )
    got = _run(model, x, y, lr, before, after)["2"].vcs
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-10, atol=1e-14)


def test_r_vcs_scales_linearly_with_lr():
    ratios = []
    for lr in (1e-3, 1e-4):
        model, x, y, before, after, _ = _one_step(lr)
        ratios.append(_run(model, x, y, lr, before, after)["2"].r_vcs)
    assert ratios[0] / ratios[1] == pytest.approx(10.0, rel=0.02)


@pytest.mark.parametrize(
    ("optimizer_cls", "kwargs"),
    [(torch.optim.SGD, {"momentum": 0.9}), (torch.optim.Adam, {}),
     (torch.optim.SGD, {"weight_decay": 0.1})],
)
def test_r_step_flags_steps_that_were_not_plain_sgd(optimizer_cls, kwargs):
    model, x, y, before, after, _ = _one_step(0.01, optimizer_cls, steps=2, **kwargs)
    results = _run(model, x, y, 0.01, before, after)
    assert min(r.r_step for r in results.values()) > 1e-3


def test_momentum_decomposition_with_the_buffer():
    # ΔG = VCS_t − ημ(Wᵀv_t + v_tᵀW) + η²(v_{t+1}ᵀv_{t+1} − ΓᵀΓ), v the momentum buffer.
    lr, mu = 0.05, 0.9
    model, x, y, _, _, optimizer = _one_step(lr, torch.optim.SGD, steps=1, momentum=mu)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layer = model[2]
    v_t = optimizer.state[layer.weight]["momentum_buffer"].clone()
    _sgd_step(model, x, y, optimizer)
    after = {k: v.clone() for k, v in model.state_dict().items()}
    v_next = optimizer.state[layer.weight]["momentum_buffer"].clone()
    result = _run(model, x, y, lr, before, after)["2"]
    w = before["2.weight"]
    grad_w = v_next - mu * v_t  # this batch's gradient, from the buffer algebra
    # ΓᵀΓ = Wᵀ(ΔᵀΔ)W, recovered from the stored remainder R = η²(G_WᵀG_W − ΓᵀΓ)
    gtg = (grad_w.T @ grad_w).numpy() - result.remainder / lr**2
    predicted = (result.vcs - lr * mu * (w.T @ v_t + v_t.T @ w).numpy()
                 + lr**2 * ((v_next.T @ v_next).numpy() - gtg))
    np.testing.assert_allclose(result.gram_change, predicted, rtol=1e-9, atol=1e-13)
    assert result.r_vcs > 0.1  # without the buffer, the current-batch VCS explains little


def test_conv_identity_needs_the_convs_own_padding():
    torch.manual_seed(1)
    conv = nn.Conv2d(2, 3, 3, padding=1, stride=2).double()
    x = torch.randn(4, 2, 7, 7, dtype=torch.float64)
    out = conv(x)
    out.retain_grad()
    (out**2).sum().backward()
    delta = _rows(conv, out.grad)
    h = _patches(conv, x)
    w = conv.weight.reshape(3, -1)
    # FL identity: Wᵀ ∇_W L = ΓᵀH with Γ = ΔW, and ∇_W L = ΔᵀH on the conv's own patches
    np.testing.assert_allclose((delta.T @ h).numpy(), conv.weight.grad.reshape(3, -1).numpy(),
                               rtol=1e-12, atol=1e-12)
    w = w.detach()
    np.testing.assert_allclose((w.T @ conv.weight.grad.reshape(3, -1)).numpy(),
                               ((delta @ w).T @ h).numpy(), rtol=1e-10, atol=1e-12)


def test_padding_zero_unfold_breaks_the_identity():
    # the reference's nn.Unfold(kernel_size) ignores the conv's padding: on a padded conv the
    # patches it sees (5×5 positions) are not those the conv used (7×7), and even matched to
    # the interior outputs they miss the border terms of ∇_W L.
    torch.manual_seed(2)
    conv = nn.Conv2d(2, 3, 3, padding=1).double()
    x = torch.randn(4, 2, 7, 7, dtype=torch.float64)
    out = conv(x)
    out.retain_grad()
    (out**3).sum().backward()
    grad = conv.weight.grad.reshape(3, -1).numpy()
    own = (_rows(conv, out.grad).T @ _patches(conv, x)).numpy()
    np.testing.assert_allclose(own, grad, rtol=1e-12, atol=1e-12)
    wrong_h = F.unfold(x, 3).transpose(1, 2).reshape(-1, 18)
    interior = out.grad[:, :, 1:-1, 1:-1].flatten(2).transpose(1, 2).reshape(-1, 3)
    wrong = (interior.T @ wrong_h).numpy()
    assert np.linalg.norm(wrong - grad) / np.linalg.norm(grad) > 0.05


def test_missing_provenance_is_refused(tmp_path):
    batches = tmp_path / "b.json"
    batches.write_text('{"batches": {"0": [0, 1], "1": [2, 3]}}')
    config = FLOptions.from_files("ce", "0.1", str(batches))
    assert config.batch_at(1, 10).tolist() == [2, 3]
    with pytest.raises(CaptureError, match="no batch recorded for step 2"):
        config.batch_at(2, 10)
    with pytest.raises(ProbeError, match=r"indices outside \[0, 3\)"):
        config.batch_at(1, 3)
    with pytest.raises(OptionError, match=r"--fl-loss \(loss\) must be one of ce, mse; got 'hinge'"):
        FLOptions.from_files("hinge", "0.1", "full")
    with pytest.raises(ProbeError, match="does not exist"):
        FLOptions.from_files("ce", str(tmp_path / "missing.json"), "full")
