"""Replay a probe through a model and capture what each layer reads, batch by batch.

A layer's *activation* is the input of a weight-bearing module (Linear, Conv1d/2d, or
transformers' Conv1D), flattened per sample (or reduced per token for text probes); a bare
parameter multiplied into its input by a tensor op is read through a torch function mode
(:class:`flq_audit.capture.params.ParameterUses`). The forward runs in the model's own dtype,
which the model's loader chose (:mod:`flq_audit.audit.loaders`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from flq_audit.capture.grams import Layer
from flq_audit.capture.params import ParameterLayer, ParameterUses
from flq_audit.errors import CaptureError, FlqAuditError, ProbeError, ProbeShapeError
from flq_audit.models import first_layer_takes
from flq_audit.probes.batches import BatchSource, NotPerTokenError, ProbeBatch, batches_of

PREDICTION = "<prediction>"
HIDDEN_STATE_PREFIX = "hidden_states."
HIDDEN_STATE_KIND = "HiddenState"
#: Model dtypes whose captured rows are upcast to float32 first.
HALF_DTYPES = (torch.float16, torch.bfloat16)


def output_classes(model: nn.Module, probe: BatchSource | np.ndarray) -> int | None:
    """Number of output columns when the model maps a batch to ``(batch, C)`` logits."""
    first = next(iter(batches_of(probe, 2)))
    if isinstance(first.inputs, dict):
        return None
    model.eval()
    with torch.no_grad():
        out = model(_cast(first.inputs, model_dtype(model)))
    if isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[0] == first.inputs.shape[0]:
        return int(out.shape[1])
    return None


class _StopForward(Exception):
    """Raised by the last hook: nothing after the deepest captured layer needs computing."""


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
    ``dtype``; float64 rows need a float64 model (float32 numbers are not upcast). A
    bfloat16 or float16 model's rows become float32 in torch before they are reduced over
    tokens and cast (NumPy has no bfloat16).
    """
    model.eval()
    model.to(device)
    compute = model_dtype(model)
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
        if tensor.dtype in HALF_DTYPES:  # reduced (token means) and stored from float32
            tensor = tensor.to(rows_dtype)
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
            captured[name] = None if rows is None else to_numpy(rows)  # type: ignore[assignment]  # None: no token axis
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
                    output = forward_batch(model, batch, device, compute, hidden_states=hidden_states)
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
                raise probe_error(batch, err, model) from err
            for name, seen in uses.items():
                parts = [p for p in seen if p is not None]
                captured[name] = to_numpy(torch.cat(parts, dim=1)) if parts else None  # type: ignore[assignment]  # None: no token axis
            yield batch.start, batch.stop, captured
    finally:
        for handle in handles:
            handle.remove()


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating parameter (float32 when it has none)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def _cast(inputs: torch.Tensor, dtype: torch.dtype, device: str = "cpu") -> torch.Tensor:
    """Floating inputs in ``dtype`` on ``device``; token ids and masks keep their dtype."""
    return inputs.to(device, dtype) if inputs.is_floating_point() else inputs.to(device)


def forward_batch(model: nn.Module, batch: ProbeBatch, device: str, compute: torch.dtype, *,
          hidden_states: bool = False) -> Any:
    if isinstance(batch.inputs, dict):
        extra = {"output_hidden_states": True} if hidden_states else {}
        return model(**{k: _cast(v, compute, device) for k, v in batch.inputs.items()}, **extra)
    return model(_cast(batch.inputs, compute, device))


def probe_error(batch: ProbeBatch, err: Exception, model: nn.Module) -> ProbeError:
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
