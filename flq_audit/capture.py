"""Replay a probe through a model and capture what each weight layer reads.

A layer's *activation* is the input of a weight-bearing module (Linear, Conv1d/2d, or
transformers' Conv1D), flattened per sample; its *gram* is WᵀW of that module's weight in the
same input space (conv kernels reshaped to ``C_out × C_in·k·k``).
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from flq_audit.errors import CaptureError, FlqAuditWarning, LayerNotFoundError, ProbeError
from flq_audit.probes.batches import BatchSource, NotPerTokenError, OneBatch, batches_of
from flq_audit.store._records import LayerInfo

_WEIGHT_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


PREDICTION = "<prediction>"
HIDDEN_STATE_PREFIX = "hidden_states."
HIDDEN_STATE_KIND = "HiddenState"


def output_classes(model: nn.Module, probe: BatchSource | np.ndarray) -> int | None:
    """Number of output columns when the model maps a batch to ``(batch, C)`` logits."""
    first = next(iter(batches_of(probe, 2)))
    if isinstance(first.inputs, dict):
        return None
    model.eval()
    with torch.no_grad():
        out = model(first.inputs)
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


def select_layers(module: nn.Module, patterns: Sequence[str] | None) -> dict[str, nn.Module]:
    """Layers whose names match any glob pattern (all weight layers when ``patterns`` is empty)."""
    available = discover_layers(module)
    if not patterns:
        if not available:
            raise LayerNotFoundError("the model has no Linear or Conv layers to capture")
        return available
    named = dict(module.named_modules())
    chosen: dict[str, nn.Module] = {}
    for pattern in patterns:
        hits = [n for n in available if fnmatch.fnmatchcase(n, pattern)]
        if not hits and pattern in named and hasattr(named[pattern], "weight"):
            hits = [pattern]
        if not hits:
            raise LayerNotFoundError(
                f"layer pattern {pattern!r} matches no weight layer; available: "
                f"{list(available)[:30]}",
                layer=pattern, hint="Pass --layers with one of these names or a glob like 'layers.*'.",
            )
        for name in hits:
            chosen[name] = named[name]
    return {n: chosen[n] for n in available if n in chosen} | {
        n: m for n, m in chosen.items() if n not in available
    }


def as_matrix(weight: torch.Tensor, *, conv1d: bool) -> torch.Tensor:
    """A weight as ``d_out × d_in``: transformers' Conv1D stores ``(d_in, d_out)``, conv
    kernels flatten to ``C_out × C_in·k·k``."""
    return weight.t() if conv1d else weight.reshape(weight.shape[0], -1)


def weight_matrix(module: nn.Module, weight: torch.Tensor | None = None) -> torch.Tensor:
    """The weight as a ``d_out × d_in`` matrix whose Gram lives in the layer's input space."""
    w = module.weight if weight is None else weight
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{type(module).__name__}.weight is a {type(w).__name__}, not a tensor")
    return as_matrix(w, conv1d=type(module).__name__ == "Conv1D")


def gram_of_matrix(matrix: torch.Tensor) -> np.ndarray:
    """WᵀW in float64 of a ``d_out × d_in`` matrix."""
    w = matrix.detach().to("cpu", torch.float64)
    return (w.t() @ w).numpy()


def gram(module: nn.Module, weight: torch.Tensor | None = None) -> np.ndarray:
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
    model: nn.Module, layers: dict[str, nn.Module], probe: BatchSource | np.ndarray,
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
        kind = type(module).__name__
        gram_width = weight_matrix(module).shape[1]
        infos.append(LayerInfo(name, kind, widths[name], gram_width))
    for name in sorted((n for n in widths if n.startswith(HIDDEN_STATE_PREFIX)),
                       key=lambda n: int(n.rsplit(".", 1)[1])):
        infos.append(LayerInfo(name, HIDDEN_STATE_KIND, widths[name], 1))  # no Gram
    return infos


def replay(
    model: nn.Module,
    layers: dict[str, nn.Module],
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
    any layer input; such "layers" have no Gram.
    """
    model.eval()
    model.to(device)
    captured: dict[str, np.ndarray] = {}
    wanted = set(layers)
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None

    def make_hook(name: str):
        def hook(_module: nn.Module, args: tuple) -> None:
            if name in captured or not args:
                return
            tensor = args[0].detach()
            try:
                rows = reduce(tensor) if reduce is not None else tensor.reshape(tensor.shape[0], -1)
            except NotPerTokenError:
                captured[name] = None  # type: ignore[assignment]
                return
            flat = rows.to("cpu", torch.float32, copy=True).numpy()
            captured[name] = flat if dtype == np.float32 else flat.astype(dtype)
            if len(captured) == len(wanted) and not (predictions or hidden_states):
                raise _StopForward

        return hook

    handles = [m.register_forward_pre_hook(make_hook(n)) for n, m in layers.items()]
    try:
        for batch in batches_of(probe, batch_size):
            captured = {}
            reduce = batch.reduce
            try:
                with torch.no_grad():
                    if isinstance(batch.inputs, dict):
                        extra = {"output_hidden_states": True} if hidden_states else {}
                        output = model(**{k: v.to(device) for k, v in batch.inputs.items()},
                                       **extra)
                    else:
                        output = model(batch.inputs.to(device))
                if predictions:
                    captured[PREDICTION] = output.argmax(-1).to("cpu").numpy()
                if hidden_states:
                    for i, state in enumerate(output.hidden_states):
                        rows = reduce(state) if reduce is not None else state.flatten(1)
                        captured[f"{HIDDEN_STATE_PREFIX}{i}"] = rows.to(
                            "cpu", torch.float32).numpy().astype(dtype, copy=False)
            except _StopForward:
                pass
            except RuntimeError as err:
                shape = tuple(batch.inputs.shape[1:]) if not isinstance(batch.inputs, dict) else (
                    {k: tuple(v.shape[1:]) for k, v in batch.inputs.items()})
                raise ProbeError(
                    f"probe inputs of shape {shape} per sample do not fit "
                    f"the model: {str(err).splitlines()[0]}",
                    hint="Check that --probe and --model belong together.",
                ) from err
            yield batch.start, batch.stop, captured
    finally:
        for handle in handles:
            handle.remove()


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when available, else ``cpu``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CaptureError(f"--device {device!r} asked for CUDA, but no CUDA device is available")
    return device
