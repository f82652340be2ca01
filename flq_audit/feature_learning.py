"""Virtual covariance and the Feature-Learning-Equation residual between two checkpoints.

For one linear map ``z = W h`` inside any network, one plain-SGD step ``W⁺ = W − η ∇_W L``
on a batch gives exactly (paper-notes §3.2)::

    ΔG  = W⁺ᵀW⁺ − WᵀW
    VCS = −η (WᵀG_W + G_WᵀW) + η² Wᵀ(ΔᵀΔ)W          with G_W = ΔᵀH = ∇_W L
    ΔG − VCS = η² (G_WᵀG_W − Wᵀ(ΔᵀΔ)W)                 (exact)

where H are the layer inputs and Δ the gradients of the layer outputs on that batch. This
module replays the batch a step trained on through θ_t, captures H and Δ with hooks, and
compares with the next checkpoint. Convolutions use im2col patches at the conv's own
stride, padding and dilation. Exact for plain SGD only (no momentum, no weight decay, no
Adam): ``r_step`` says whether the step really was plain SGD on that batch at that lr.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from flq_audit._json import read_json_object
from flq_audit.capture import weight_matrix
from flq_audit.errors import CaptureError, ProbeError, ProbeNotFoundError

LossOptions = Literal["ce", "mse"]


@dataclass(frozen=True)
class FLConfig:
    """Training provenance the FL residual needs: loss, learning rate(s), batches."""

    loss: LossOptions
    lr: float | dict[int, float]
    batches: dict[int, list[int]] | None  # None: the full probe was the batch

    def lr_at(self, step: int) -> float:
        if isinstance(self.lr, dict):
            if step not in self.lr:
                raise CaptureError(f"FL residual: no learning rate recorded for step {step}",
                                   step=step, hint="Give --fl-lr a value for every step.")
            return self.lr[step]
        return self.lr

    def batch_at(self, step: int, n_samples: int) -> np.ndarray:
        if self.batches is None:
            return np.arange(n_samples)
        if step not in self.batches:
            raise CaptureError(
                f"FL residual: no batch recorded for step {step} (the update from step {step} "
                "to the next checkpoint)", step=step,
                hint="The batches file must list the probe indices of every selected step.",
            )
        batch = np.asarray(self.batches[step], dtype=np.int64)
        if batch.size == 0 or batch.min() < 0 or batch.max() >= n_samples:
            raise ProbeError(
                f"FL residual: batch of step {step} holds indices outside [0, {n_samples})",
                step=step,
            )
        return batch

    def to_json_dict(self) -> dict[str, object]:
        return {"loss": self.loss, "lr": self.lr if not isinstance(self.lr, dict) else
                {str(k): v for k, v in self.lr.items()},
                "batches": "full" if self.batches is None else
                {str(k): len(v) for k, v in self.batches.items()}}


def load_fl_config(loss: str, lr: str | float, batches: str) -> FLConfig:
    """Parse ``--fl-loss``, ``--fl-lr`` (a number or a JSON ``{step: lr}`` file) and
    ``--fl-batches`` (``full`` or a JSON file ``{step: [indices]}``, optionally nested under
    ``"batches"`` as the ``sgd_every_step`` recipe writes it)."""
    if loss not in ("ce", "mse"):
        raise ValueError(f"--fl-loss must be 'ce' or 'mse', got {loss!r}")
    rate: float | dict[int, float]
    try:
        rate = float(lr)
    except ValueError:
        rate = {int(k): float(v) for k, v in _read_json(lr, "--fl-lr").items()}
    if batches == "full":
        return FLConfig(loss, rate, None)  # type: ignore[arg-type]
    data = _read_json(batches, "--fl-batches")
    data = data.get("batches", data)
    return FLConfig(loss, rate, {int(k): [int(i) for i in v] for k, v in data.items()})  # type: ignore[arg-type]


def _read_json(path: str | Path, flag: str) -> dict:
    return read_json_object(path, f"{flag} file", missing=ProbeNotFoundError, invalid=ProbeError)


@dataclass(frozen=True)
class FLLayerResult:
    """FL quantities of one layer for one step (matrices are d × d in the Gram's space)."""

    vcs: np.ndarray
    gram_change: np.ndarray
    remainder: np.ndarray
    r_vcs: float
    r_step: float
    residual: float


def fl_quantities(
    model: nn.Module,
    layers: Mapping[str, nn.Module],
    inputs: np.ndarray,
    targets: np.ndarray,
    labels: np.ndarray | None,
    state: Mapping[str, torch.Tensor],
    next_weights: Mapping[str, torch.Tensor],
    *,
    loss: LossOptions,
    lr: float,
) -> dict[str, FLLayerResult]:
    """Replay one training batch through ``model`` loaded with θ_t (``state``, in float64,
    train mode) and compare with the next checkpoint's weights ``next_weights``."""
    work = model.double().train()
    try:
        work.load_state_dict(dict(state), strict=False)  # float64 copies: no float32 rounding
        rows, grads = _batch_rows_and_gradients(work, layers, inputs, targets, labels, loss)
        results = {}
        with torch.no_grad():
            for name, module in layers.items():
                if name not in grads:
                    raise CaptureError(f"FL residual: layer {name!r} received no gradient",
                                       layer=name)
                w = weight_matrix(module).detach().double()
                w_next = weight_matrix(module, next_weights[name]).detach().double()
                results[name] = _layer_result(rows[name], grads[name], w, w_next, lr)
        return results
    finally:
        model.float()


def _batch_rows_and_gradients(
    model: nn.Module,
    layers: Mapping[str, nn.Module],
    inputs: np.ndarray,
    targets: np.ndarray,
    labels: np.ndarray | None,
    loss: LossOptions,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One forward/backward of the batch: each layer's input rows H and output gradients Δ."""
    rows: dict[str, torch.Tensor] = {}
    grads: dict[str, torch.Tensor] = {}

    def make_hook(name: str, module: nn.Module):
        def hook(_m: nn.Module, args: tuple, output: torch.Tensor) -> None:
            rows[name] = _patches(module, args[0].detach())
            output.register_hook(lambda grad: grads.__setitem__(name, _rows(module, grad)))

        return hook

    handles = [m.register_forward_hook(make_hook(n, m)) for n, m in layers.items()]
    try:
        out = model(torch.from_numpy(np.ascontiguousarray(inputs)).double())
        if loss == "ce":
            if labels is None:
                raise ProbeError("FL residual with --fl-loss ce needs a class probe")
            value = F.cross_entropy(out, torch.from_numpy(labels).long(), reduction="mean")
        else:
            value = F.mse_loss(out, torch.from_numpy(targets).double().reshape(out.shape),
                               reduction="mean")
        model.zero_grad(set_to_none=True)
        value.backward()
    finally:
        for handle in handles:
            handle.remove()
    return rows, grads


def _layer_result(
    h: torch.Tensor, delta: torch.Tensor, w: torch.Tensor, w_next: torch.Tensor, lr: float
) -> FLLayerResult:
    grad_w = delta.T @ h  # ΔᵀH = ∇_W L
    dtd = delta.T @ delta
    vcs = -lr * (w.T @ grad_w + grad_w.T @ w) + lr**2 * (w.T @ dtd @ w)
    gram_change = w_next.T @ w_next - w.T @ w
    remainder = lr**2 * (grad_w.T @ grad_w - w.T @ dtd @ w)
    change_norm = torch.linalg.norm(gram_change)
    update = (w - w_next) / lr
    return FLLayerResult(
        vcs=vcs.numpy(), gram_change=gram_change.numpy(), remainder=remainder.numpy(),
        r_vcs=_ratio(torch.linalg.norm(gram_change - vcs), change_norm),
        r_step=_ratio(torch.linalg.norm(update - grad_w), torch.linalg.norm(grad_w)),
        residual=_ratio(torch.linalg.norm(gram_change - vcs - remainder), change_norm),
    )


def _ratio(num: torch.Tensor, den: torch.Tensor) -> float:
    return float(num / den) if float(den) > 0 else float("nan")


def _patches(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Rows the weight multiplies: the input itself, or im2col patches for a conv."""
    if isinstance(module, nn.Conv3d):
        raise CaptureError("FL residual: Conv3d layers are not supported; exclude them with --layers")
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise CaptureError("FL residual: grouped convolutions are not supported")
        cols = F.unfold(x, module.kernel_size, dilation=module.dilation,
                        padding=module.padding, stride=module.stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    if isinstance(module, nn.Conv1d):
        cols = F.unfold(x.unsqueeze(-1), (module.kernel_size[0], 1),
                        dilation=(module.dilation[0], 1), padding=(module.padding[0], 0),
                        stride=(module.stride[0], 1))
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return x.reshape(-1, x.shape[-1])


def _rows(module: nn.Module, grad: torch.Tensor) -> torch.Tensor:
    """Output gradients as rows matching :func:`_patches`."""
    if isinstance(module, nn.Conv1d | nn.Conv2d):
        return grad.flatten(2).transpose(1, 2).reshape(-1, grad.shape[1])
    return grad.reshape(-1, grad.shape[-1])
