"""Virtual covariance and the Feature-Learning-Equation residual between two checkpoints.

For one linear map ``z = W h`` inside any network, one plain-SGD step ``W⁺ = W − η ∇_W L``
on a batch gives exactly (docs/concepts.md#the-feature-learning-equation-residual)::

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

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from flq_audit.audit.extensions.base import Extension, StepContext, stack_padded
from flq_audit.audit.loaders import training_module
from flq_audit.capture import weight_matrix
from flq_audit.constants import GRAM_I, GRAM_J, LAYER, STEP
from flq_audit.errors import CaptureError, ModelBuildError, ProbeError
from flq_audit.options import FLOptions
from flq_audit.probes import Probe
from flq_audit.store._records import VariableSpec, parameter_input_dims

if TYPE_CHECKING:
    from flq_audit.audit.plan import AuditPlan
    from flq_audit.store import StoreLayout

LossOptions = Literal["ce", "mse"]

REFERENCE = "docs/concepts.md#the-feature-learning-equation-residual"
FL_MATRICES = {
    "fl_vcs": "virtual covariance shift -η(WᵀG_W + G_WᵀW) + η²WᵀΔᵀΔW",
    "fl_gram_change": "ΔG = W_nextᵀW_next − WᵀW",
    "fl_remainder": "predicted η² remainder η²(G_WᵀG_W − WᵀΔᵀΔW)",
}
FL_SCALARS = {
    "fl_r_vcs": "‖ΔG − VCS‖_F / ‖ΔG‖_F (O(η) for plain SGD)",
    "fl_r_step": "‖(W − W_next)/η − ΔᵀH‖_F / ‖ΔᵀH‖_F (≈ 0 iff the step was plain SGD)",
    "fl_residual": "‖ΔG − VCS − remainder‖_F / ‖ΔG‖_F (rounding level when exact)",
}


class FeatureLearningResidual(Extension):
    """The FL residual of the update from each selected step to the next one."""

    name: ClassVar[str] = "fl"
    copy_duplicates: ClassVar[bool] = False  # the values depend on the next checkpoint

    def __init__(self, options: FLOptions) -> None:
        self.options = options
        self.training: Probe | None = options.training_probe()  # --fl-probe, if given

    def store_attrs(self) -> Mapping[str, str]:
        """``fl_probe``: name, size and hash of the data the FL replay indexes."""
        if self.training is None:
            return {}
        return {"fl_probe": json.dumps({
            "name": self.training.name, "n_samples": self.training.n_samples,
            "fingerprint": self.training.fingerprint})}

    def _probe(self, plan: AuditPlan) -> Probe:
        """The data the batch indices point into: the FL probe, else the audit's probe."""
        probe = self.training if self.training is not None else plan.probe
        if not isinstance(probe, Probe):
            raise ProbeError("the FL residual needs an array probe (inputs, targets)",
                             hint="Give the training set with --fl-probe FILE.")
        return probe

    def variables(self, layout: StoreLayout) -> Sequence[VariableSpec]:
        matrices = [VariableSpec(name, (STEP, LAYER, GRAM_I, GRAM_J),
                                 attrs={"long_name": text, "reference": REFERENCE})
                    for name, text in FL_MATRICES.items()]
        scalars = [VariableSpec(name, (STEP, LAYER), attrs={
            "long_name": text, "flq_metric": "fl", "reference": REFERENCE})
            for name, text in FL_SCALARS.items()]
        return [*matrices, *scalars]

    def preflight(self, plan: AuditPlan) -> None:
        """Refuse missing provenance before any checkpoint is read."""
        probe = self._probe(plan)
        if self.options.loss == "ce" and probe.kind != "classes":
            raise ProbeError(f"--fl-loss ce needs a class probe; {probe.name!r} has continuous "
                             "targets")
        params = [li.name for li in plan.layers if parameter_input_dims(li.kind) is not None]
        if params:
            raise CaptureError(f"the FL residual covers Linear and Conv layers, not the "
                               f"parameter layers {params}",
                               hint="Leave them out with --layers, or drop the --fl-* options.")
        if self.training is not None and plan.loader.template is not None:
            _check_fits(plan.loader.template.module, self.training)
        self.options = self.options.for_steps(plan.all_steps)
        for ref in plan.refs[:-1]:
            self.options.lr_at(ref.step)
            self.options.batch_at(ref.step, probe.n_samples)

    def on_step(self, ctx: StepContext) -> Mapping[str, np.ndarray]:
        if ctx.next_ref is None or ctx.built is None:
            return {}
        from flq_audit.models import map_keys
        from flq_audit.weights import load_state_dict

        plan, following = ctx.plan, ctx.next_ref
        probe = self._probe(plan)
        loaded = ctx.next_state()  # the prefetcher's copy, else load it here
        if loaded is None:
            loaded = load_state_dict(plan.source.fetch(following),
                                     trust_pickle=ctx.run.trust_pickle, step=following.step)
        next_state = map_keys(ctx.built, dict(loaded))
        missing = [name for name in ctx.layers if f"{name}.weight" not in next_state]
        if missing:
            raise ModelBuildError(f"step {following.step}: no weight for layer(s) {missing}",
                                  step=following.step)
        batch = self.options.batch_at(ctx.ref.step, probe.n_samples)
        labels = None if probe.labels is None else probe.labels[batch]
        results = fl_residuals(
            plan.loader.training_copy(ctx.built, ctx.state), list(ctx.layers),
            probe.inputs[batch], probe.targets[batch], labels,
            {name: next_state[f"{name}.weight"] for name in ctx.layers},
            loss=self.options.loss, lr=self.options.lr_at(ctx.ref.step),
        )
        per_layer = [results.get(info.name) for info in plan.layers]
        size = (plan.layout.gram_max, plan.layout.gram_max)
        out = {f"fl_{name}": stack_padded([None if r is None else getattr(r, name)
                                            for r in per_layer], size)
               for name in ("vcs", "gram_change", "remainder")}
        for name in ("r_vcs", "r_step", "residual"):
            out[f"fl_{name}"] = np.asarray([np.nan if r is None else getattr(r, name)
                                            for r in per_layer])
        return out

    def after_audit(self, plan: AuditPlan) -> None:
        """Warn when the stored ``fl_r_step`` says the checkpoints are not plain SGD steps
        (the report's rule, :func:`flq_audit.fl_steps.diagnose_fl_steps`)."""
        import warnings

        from flq_audit.errors import NotPlainSGDWarning
        from flq_audit.fl_steps import diagnose_fl_steps
        from flq_audit.store import open_dataset

        with open_dataset(plan.store, dask=False) as ds:
            done = ds["done"].values.astype(bool)
            r_step = ds["fl_r_step"].transpose(STEP, LAYER).values[done]
        diagnosis = diagnose_fl_steps(r_step)
        if diagnosis.plain_sgd is False:
            warnings.warn(" ".join(diagnosis.lines), NotPlainSGDWarning, stacklevel=2)


def _check_fits(model: nn.Module, probe: Probe) -> None:
    """One forward pass of two FL-probe samples, or a ProbeError saying why it fails."""
    was_training = model.training
    first = next(model.parameters(), None)
    sample = torch.from_numpy(np.ascontiguousarray(probe.inputs[:2]))
    sample = sample.float() if first is None else sample.to(first.device, first.dtype)
    try:
        with torch.no_grad():
            model.eval()(sample)
    except Exception as err:  # any failure of a user model: report, do not crash
        raise ProbeError(
            f"--fl-probe {probe.name!r}: its inputs {tuple(probe.inputs.shape[1:])} do not fit "
            f"the model ({type(err).__name__}: {err})") from err
    finally:
        model.train(was_training)


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
    """Replay one training batch through a float64 train-mode copy of ``model`` loaded with
    θ_t (``state``) and compare with the next checkpoint's weights ``next_weights``;
    ``model`` is not changed. ``layers`` are modules of ``model``, by their names in it."""
    return fl_residuals(training_module(model, state), list(layers), inputs, targets, labels,
                        next_weights, loss=loss, lr=lr)


def fl_residuals(
    work: nn.Module,
    names: Sequence[str],
    inputs: np.ndarray,
    targets: np.ndarray,
    labels: np.ndarray | None,
    next_weights: Mapping[str, torch.Tensor],
    *,
    loss: LossOptions,
    lr: float,
) -> dict[str, FLLayerResult]:
    """:func:`fl_quantities` on ``work``, a training copy already holding θ_t
    (:meth:`~flq_audit.audit.loaders.ModelLoader.training_copy`); ``names`` are its layers."""
    modules = dict(work.named_modules())
    layers = {name: modules[name] for name in names}
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
    if isinstance(module, nn.Conv1d | nn.Conv2d) and isinstance(module.padding, str):
        raise CaptureError(f"FL residual: padding={module.padding!r} is not supported; "
                           "give the convolution numeric padding")
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise CaptureError("FL residual: grouped convolutions are not supported")
        padding = tuple(int(p) for p in module.padding)
        cols = F.unfold(x, module.kernel_size, dilation=module.dilation,
                        padding=padding, stride=module.stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    if isinstance(module, nn.Conv1d):
        cols = F.unfold(x.unsqueeze(-1), (module.kernel_size[0], 1),
                        dilation=(module.dilation[0], 1), padding=(int(module.padding[0]), 0),
                        stride=(module.stride[0], 1))
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return x.reshape(-1, x.shape[-1])


def _rows(module: nn.Module, grad: torch.Tensor) -> torch.Tensor:
    """Output gradients as rows matching :func:`_patches`."""
    if isinstance(module, nn.Conv1d | nn.Conv2d):
        return grad.flatten(2).transpose(1, 2).reshape(-1, grad.shape[1])
    return grad.reshape(-1, grad.shape[-1])
