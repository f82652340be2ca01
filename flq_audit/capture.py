"""Replay a probe through a model and capture what each weight layer reads.

A layer's *activation* is the input of a weight-bearing module (Linear, Conv1d/2d, or
transformers' Conv1D), flattened per sample; its *gram* is WᵀW of that module's weight in the
same input space (conv kernels reshaped to ``C_out × C_in·k·k``). A bare parameter multiplied
into its input by a tensor op (``x @ W.T``, ``F.linear``, ``einsum``) is a layer too, read
through a torch function mode (:mod:`flq_audit.capture_params`).
"""

from __future__ import annotations

import contextlib
import fnmatch
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from flq_audit.capture_params import (
    ParameterLayer,
    ParameterUses,
    candidate_parameters,
    discover_parameter_layers,
    in_model_order,
    refusals,
    unchecked,
)
from flq_audit.errors import (
    CaptureError,
    FlqAuditError,
    FlqAuditWarning,
    LayerNotFoundError,
    ProbeError,
    ProbeShapeError,
)
from flq_audit.models import first_layer_takes
from flq_audit.probes.batches import BatchSource, NotPerTokenError, OneBatch, ProbeBatch, batches_of
from flq_audit.store._records import LayerInfo

_WEIGHT_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


PREDICTION = "<prediction>"
HIDDEN_STATE_PREFIX = "hidden_states."
HIDDEN_STATE_KIND = "HiddenState"
#: What a captured layer is: a weight-bearing module or a parameter read by a tensor op.
Layer = nn.Module | ParameterLayer


def output_classes(model: nn.Module, probe: BatchSource | np.ndarray) -> int | None:
    """Number of output columns when the model maps a batch to ``(batch, C)`` logits."""
    first = next(iter(batches_of(probe, 2)))
    if isinstance(first.inputs, dict):
        return None
    model.eval()
    with torch.no_grad():
        out = model(_cast(first.inputs, _compute_dtype(model)))
    if isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[0] == first.inputs.shape[0]:
        return int(out.shape[1])
    return None


class _StopForward(Exception):
    """Raised by the last hook: nothing after the deepest captured layer needs computing."""


def discover_layers(module: nn.Module) -> dict[str, nn.Module]:
    """Every weight-bearing module by dotted name, in registration order."""
    found = {}
    for name, sub in module.named_modules():
        if isinstance(sub, _WEIGHT_MODULES) or type(sub).__name__ == "Conv1D":
            found[name] = sub
    return found


_PARAMETER_HINT = (
    "A parameter is a layer when the forward pass multiplies its input by it: x @ W.T, x @ W, "
    "F.linear(x, W), torch.matmul/mm/addmm, or torch.einsum with one other operand. Name "
    "layers with --layers (a parameter by its name, e.g. --layers W_in, or a glob like 'W_*')."
)


def select_layers(
    module: nn.Module, patterns: Sequence[str] | None,
    probe: BatchSource | np.ndarray | None = None,
) -> dict[str, Layer]:
    """Layers whose names match any glob pattern (all layers when ``patterns`` is empty).

    With a ``probe``, one forward pass of its first batch also finds the parameters that a
    tensor op multiplies into its input (:class:`ParameterLayer`, named by parameter name).
    Modules and parameters come in registration order.
    """
    modules = discover_layers(module)
    params: dict[str, ParameterLayer] = {}
    refused: dict[str, str] = {}
    if probe is not None:
        params, refused = parameter_layers(module, probe, exclude=modules)
    available = in_model_order(module, modules, params)
    if not patterns:
        if not available:
            raise LayerNotFoundError(
                "the model has no Linear or Conv layers to capture"
                + (refusals(refused) if refused else unchecked(candidate_parameters(module, modules))),
                hint=_PARAMETER_HINT)
        return available
    named = dict(module.named_modules())
    chosen: dict[str, Layer] = {}
    for pattern in patterns:
        hits = [n for n in available if fnmatch.fnmatchcase(n, pattern)]
        if not hits and pattern in named and hasattr(named[pattern], "weight"):
            hits = [pattern]
        if not hits:
            why = {n: r for n, r in refused.items() if fnmatch.fnmatchcase(n, pattern)}
            raise LayerNotFoundError(
                f"layer pattern {pattern!r} matches no weight layer; available: "
                f"{list(available)[:30]}" + refusals(why),
                layer=pattern, hint="Pass --layers with one of these names or a glob like "
                "'layers.*'." + (f" {_PARAMETER_HINT}" if why else ""),
            )
        for name in hits:
            chosen[name] = available[name] if name in available else named[name]
    return {n: chosen[n] for n in available if n in chosen} | {
        n: m for n, m in chosen.items() if n not in available
    }


def parameter_layers(
    module: nn.Module, probe: BatchSource | np.ndarray, *, exclude: Mapping[str, nn.Module],
) -> tuple[dict[str, ParameterLayer], dict[str, str]]:
    """Parameters (not those of ``exclude``'s modules) that the probe's first batch multiplies
    into an input, and why the others are not layers."""
    first = next(iter(batches_of(probe, 3)))
    own = {id(m.weight) for m in exclude.values() if isinstance(m.weight, torch.Tensor)}
    module.eval()

    def forward() -> int:
        with torch.no_grad():
            _call(module, first, "cpu", _compute_dtype(module))
        return first.stop - first.start

    try:
        return discover_parameter_layers(module, forward, exclude=own)
    except FlqAuditError:
        raise
    except Exception as err:
        try:
            forward()  # without the function mode: does the probe fit the model at all?
        except Exception as plain:
            raise _probe_error(first, plain, module) from plain
        warnings.warn(f"parameters were not checked for use as layers: the forward pass under "
                      f"a torch function mode raised {err!r}", FlqAuditWarning, stacklevel=3)
        return {}, {}


def as_matrix(weight: torch.Tensor, *, conv1d: bool) -> torch.Tensor:
    """A weight as ``d_out × d_in``: transformers' Conv1D stores ``(d_in, d_out)``, conv
    kernels flatten to ``C_out × C_in·k·k``."""
    return weight.t() if conv1d else weight.reshape(weight.shape[0], -1)


def weight_matrix(module: Layer, weight: torch.Tensor | None = None) -> torch.Tensor:
    """The weight as a ``d_out × d_in`` matrix whose Gram lives in the layer's input space."""
    if isinstance(module, ParameterLayer):
        return module.matrix(weight)
    w = module.weight if weight is None else weight
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{type(module).__name__}.weight is a {type(w).__name__}, not a tensor")
    return as_matrix(w, conv1d=type(module).__name__ == "Conv1D")


def gram_of_matrix(matrix: torch.Tensor) -> np.ndarray:
    """WᵀW in float64 of a ``d_out × d_in`` matrix."""
    w = matrix.detach().to("cpu", torch.float64)
    return (w.t() @ w).numpy()


def gram(module: Layer, weight: torch.Tensor | None = None) -> np.ndarray:
    """WᵀW in float64."""
    return gram_of_matrix(weight_matrix(module, weight))


# transformers families whose Conv1D modules store weights as (d_in, d_out).
CONV1D_MODEL_TYPES = ("gpt2", "openai-gpt")
_CONV1D_SUFFIXES = ("c_attn", "c_proj", "c_fc", "q_attn")
_NOT_LAYERS = ("embed", "wte", "wpe", "embedding", "norm", "ln_", "layernorm")


def weight_layer_infos(
    shapes: dict[str, tuple[int, ...]],
    *,
    model_type: str | None = None,
    patterns: Sequence[str] | None = None,
) -> list[LayerInfo]:
    """Layers of a weights-only audit, from tensor names and shapes alone.

    Every ``*.weight`` with 2 or more dimensions is a layer, except embeddings and norms;
    the Gram width is the input width (``prod(shape[1:])``, or ``shape[0]`` for transformers'
    Conv1D in GPT-2-style families).
    """
    infos = []
    for key, shape in shapes.items():
        if not key.endswith(".weight") or len(shape) < 2:
            continue
        name = key[: -len(".weight")]
        if any(part in name.lower() for part in _NOT_LAYERS):
            continue
        if patterns and not any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        conv1d = model_type in CONV1D_MODEL_TYPES and name.endswith(_CONV1D_SUFFIXES)
        width = shape[0] if conv1d else int(np.prod(shape[1:]))
        infos.append(LayerInfo(name, "Conv1D" if conv1d else f"weight{len(shape)}d", width, width))
    if not infos:
        raise LayerNotFoundError(
            f"no weight matrices found (looked at {len(shapes)} tensors"
            + (f" with patterns {list(patterns)}" if patterns else "") + ")"
        )
    return infos


def gram_of_tensor(weight: torch.Tensor, kind: str) -> np.ndarray:
    """WᵀW in float64 of a bare tensor (``kind`` from :func:`weight_layer_infos`)."""
    return gram_of_matrix(as_matrix(weight, conv1d=kind == "Conv1D"))


def layer_infos(
    model: nn.Module, layers: Mapping[str, Layer], probe: BatchSource | np.ndarray,
    *, hidden_states: bool = False,
) -> list[LayerInfo]:
    """Measure each layer's input width with one small forward pass.

    This runs before any checkpoint is read, so a probe that does not fit the model fails
    fast with :class:`ProbeError`.
    """
    first = next(iter(batches_of(probe, 2)))
    batch = next(iter(replay(model, layers, OneBatch(first), batch_size=2, device="cpu",
                             hidden_states=hidden_states)))
    widths = {name: array.shape[1] for name, array in batch[2].items() if array is not None}
    skipped = [name for name, array in batch[2].items() if array is None]
    if skipped:
        warnings.warn(f"layers without a token axis are skipped for this token-level probe: "
                      f"{skipped}", FlqAuditWarning, stacklevel=2)
    infos = []
    for name, module in layers.items():
        if name in skipped:
            continue
        if name not in widths:
            raise CaptureError(
                f"layer {name!r} was never called in the forward pass", layer=name
            )
        kind = module.kind if isinstance(module, ParameterLayer) else type(module).__name__
        gram_width = weight_matrix(module).shape[1]
        infos.append(LayerInfo(name, kind, widths[name], gram_width))
    for name in sorted((n for n in widths if n.startswith(HIDDEN_STATE_PREFIX)),
                       key=lambda n: int(n.rsplit(".", 1)[1])):
        infos.append(LayerInfo(name, HIDDEN_STATE_KIND, widths[name], 1))  # no Gram
    return infos


def replay(
    model: nn.Module,
    layers: Mapping[str, Layer],
    probe: BatchSource | np.ndarray,
    *,
    batch_size: int,
    device: str,
    dtype: np.dtype | type = np.float32,
    predictions: bool = False,
    hidden_states: bool = False,
) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
    """Yield ``(start, stop, {layer: (rows, width) array})`` batch by batch (eval, no grad).

    ``probe`` is an array of inputs or an object with ``batches(batch_size)`` (text probes).
    With ``predictions``, the forward runs to the end and ``PREDICTION`` maps to the argmax
    of the model's output (class probes). With ``hidden_states`` (transformers models), the
    residual stream ``hidden_states.i`` (embeddings = 0) is captured as well, reduced like
    any layer input; such "layers" have no Gram. The forward runs in the model's own dtype
    (the model's loader chose it: :mod:`flq_audit.audit.loaders`) and the rows are cast to
    ``dtype``; float64 rows need a float64 model (float32 numbers are not upcast).
    """
    model.eval()
    model.to(device)
    compute = _compute_dtype(model)
    if np.dtype(dtype) == np.float64 and compute != torch.float64:
        raise CaptureError(f"a float64 replay needs a float64 model; this one computes in "
                           f"{compute} (load it in float64 first)")
    rows_dtype = torch.float64 if np.dtype(dtype) == np.float64 else torch.float32
    captured: dict[str, np.ndarray] = {}
    params = {n: m for n, m in layers.items() if isinstance(m, ParameterLayer)}
    modules = {n: m for n, m in layers.items() if not isinstance(m, ParameterLayer)}
    wanted = set(modules)
    stop_early = not (predictions or hidden_states or params)
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
    uses: dict[str, list[torch.Tensor | None]] = {}
    batch_rows = 0

    def as_rows(tensor: torch.Tensor) -> torch.Tensor | None:
        try:
            rows = reduce(tensor) if reduce is not None else tensor.reshape(tensor.shape[0], -1)
        except NotPerTokenError:
            return None
        return rows.to("cpu", rows_dtype, copy=True)

    def to_numpy(rows: torch.Tensor) -> np.ndarray:
        flat = rows.numpy()
        return flat if flat.dtype == np.dtype(dtype) else flat.astype(dtype)

    def make_hook(name: str):
        def hook(_module: nn.Module, args: tuple) -> None:
            if name in captured or not args:
                return
            rows = as_rows(args[0].detach())
            captured[name] = None if rows is None else to_numpy(rows)  # type: ignore[assignment]
            if stop_early and len(captured) == len(wanted):
                raise _StopForward

        return hook

    def on_use(name: str, dims: tuple[int, ...], other: torch.Tensor, op: str) -> None:
        layer = params.get(name)
        if layer is None:
            return
        if dims != layer.input_dims:
            raise CaptureError(
                f"parameter layer {name!r}: {op} contracts its dimensions {dims}, but the layer "
                f"was planned with {layer.input_dims} ({layer.kind})", layer=name)
        rows = as_rows(other.detach())
        if rows is not None and rows.shape[0] != batch_rows:
            raise CaptureError(
                f"parameter layer {name!r}: the operand of {op} has {rows.shape[0]} rows for a "
                f"batch of {batch_rows} samples (no per-sample axis)", layer=name)
        uses.setdefault(name, []).append(rows)

    mode = ParameterUses({id(m.parameter): n for n, m in params.items()}, on_use)
    handles = [m.register_forward_pre_hook(make_hook(n)) for n, m in modules.items()]
    try:
        for batch in batches_of(probe, batch_size):
            captured, uses, batch_rows = {}, {}, batch.stop - batch.start
            reduce = batch.reduce
            mode.reset({n: m.parameter for n, m in params.items()})
            try:
                with torch.no_grad(), (mode if params else contextlib.nullcontext()):
                    output = _call(model, batch, device, compute, hidden_states=hidden_states)
                if predictions:
                    captured[PREDICTION] = output.argmax(-1).to("cpu").numpy()
                if hidden_states:
                    for i, state in enumerate(output.hidden_states):
                        rows = as_rows(state)
                        assert rows is not None
                        captured[f"{HIDDEN_STATE_PREFIX}{i}"] = to_numpy(rows)
            except _StopForward:
                pass
            except FlqAuditError:
                raise
            except RuntimeError as err:
                raise _probe_error(batch, err, model) from err
            for name, seen in uses.items():
                parts = [p for p in seen if p is not None]
                captured[name] = to_numpy(torch.cat(parts, dim=1)) if parts else None  # type: ignore[assignment]
            yield batch.start, batch.stop, captured
    finally:
        for handle in handles:
            handle.remove()


def _compute_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating parameter (float32 when it has none)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def _cast(inputs: torch.Tensor, dtype: torch.dtype, device: str = "cpu") -> torch.Tensor:
    """Floating inputs in ``dtype`` on ``device``; token ids and masks keep their dtype."""
    return inputs.to(device, dtype) if inputs.is_floating_point() else inputs.to(device)


def _call(model: nn.Module, batch: ProbeBatch, device: str, compute: torch.dtype, *,
          hidden_states: bool = False) -> Any:
    if isinstance(batch.inputs, dict):
        extra = {"output_hidden_states": True} if hidden_states else {}
        return model(**{k: _cast(v, compute, device) for k, v in batch.inputs.items()}, **extra)
    return model(_cast(batch.inputs, compute, device))


def _probe_error(batch: ProbeBatch, err: Exception, model: nn.Module) -> ProbeError:
    shape = tuple(batch.inputs.shape[1:]) if not isinstance(batch.inputs, dict) else (
        {k: tuple(v.shape[1:]) for k, v in batch.inputs.items()})
    return ProbeShapeError(f"probe inputs of shape {shape} per sample do not fit the model"
                           f"{first_layer_takes(model)} ({str(err).splitlines()[0]})",
                           hint="Check that --probe and --model belong together.")


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when available, else ``cpu``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CaptureError(f"--device {device!r} asked for CUDA, but no CUDA device is available")
    return device
