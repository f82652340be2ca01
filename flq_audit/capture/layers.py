"""Which layers an audit captures: weight-bearing modules, parameters used as layers, and
the layers of a weights-only audit read from tensor names and shapes alone.

A layer's *gram* is WᵀW of its weight in the input space the layer reads
(:mod:`flq_audit.capture.grams`); parameters multiplied into their input by a tensor op
(``x @ W.T``, ``F.linear``, ``einsum``) are found by :mod:`flq_audit.capture.params`.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from flq_audit.capture.grams import CONV1D_MODEL_TYPES, Layer, weight_matrix
from flq_audit.capture.params import (
    ParameterLayer,
    candidate_parameters,
    discover_parameter_layers,
    in_model_order,
    refusals,
    unchecked,
)
from flq_audit.capture.replay import (
    HIDDEN_STATE_KIND,
    HIDDEN_STATE_PREFIX,
    forward_batch,
    model_dtype,
    probe_error,
    replay,
)
from flq_audit.capture.roles import model_type_of, resolve_roles
from flq_audit.errors import CaptureError, FlqAuditError, FlqAuditWarning, LayerNotFoundError
from flq_audit.probes.batches import BatchSource, OneBatch, batches_of
from flq_audit.store._records import LayerInfo

_WEIGHT_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


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
    patterns, _ = resolve_roles(patterns, [*available, *_weighted(named, available)],
                                model_type=model_type_of(module))
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


def _weighted(named: Mapping[str, nn.Module], layers: Mapping[str, Layer]) -> list[str]:
    """Modules with a weight matrix that are not layers (embeddings), for role selectors."""
    return [n for n, m in named.items() if n not in layers
            and isinstance(w := getattr(m, "weight", None), torch.Tensor) and w.ndim >= 2]


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
            forward_batch(module, first, "cpu", model_dtype(module))
        return first.stop - first.start

    try:
        return discover_parameter_layers(module, forward, exclude=own)
    except FlqAuditError:
        raise
    except Exception as err:
        try:
            forward()  # without the function mode: does the probe fit the model at all?
        except Exception as plain:
            raise probe_error(first, plain, module) from plain
        warnings.warn(f"parameters were not checked for use as layers: the forward pass under "
                      f"a torch function mode raised {err!r}", FlqAuditWarning, stacklevel=3)
        return {}, {}


_CONV1D_SUFFIXES = ("c_attn", "c_proj", "c_fc", "q_attn")
_NOT_LAYERS = ("embed", "wte", "wpe", "embedding", "norm", "ln_", "layernorm")


def weight_layer_infos(
    shapes: dict[str, tuple[int, ...]],
    *,
    model_type: str | None = None,
    patterns: Sequence[str] | None = None,
) -> list[LayerInfo]:
    """Layers of a weights-only audit, from tensor names and shapes alone.

    Every ``*.weight`` with 2 or more dimensions is a layer, except embeddings and norms
    (an embedding is one when a role selector names it: ``embed``, or a tied ``unembed``);
    the Gram width is the input width (``prod(shape[1:])``, or ``shape[0]`` for transformers'
    Conv1D in GPT-2-style families).
    """
    matrices = [k[: -len(".weight")] for k, s in shapes.items() if k.endswith(".weight") and len(s) > 1]
    patterns, by_role = resolve_roles(patterns or (), matrices, model_type=model_type,
                                      weights_only=True)
    infos = []
    for key, shape in shapes.items():
        if not key.endswith(".weight") or len(shape) < 2:
            continue
        name = key[: -len(".weight")]
        if name not in by_role and any(part in name.lower() for part in _NOT_LAYERS):
            continue  # a role selector may pick an embedding
        if patterns and not any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        conv1d = model_type in CONV1D_MODEL_TYPES and name.endswith(_CONV1D_SUFFIXES)
        width = shape[0] if conv1d else int(np.prod(shape[1:]))
        rows = int(shape[1]) if conv1d else int(shape[0])
        infos.append(LayerInfo(name, "Conv1D" if conv1d else f"weight{len(shape)}d", width, width,
                               rows))
    if not infos:
        raise LayerNotFoundError(
            f"no weight matrices found (looked at {len(shapes)} tensors"
            + (f" with patterns {list(patterns)}" if patterns else "") + ")"
        )
    return infos


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
        gram_rows, gram_width = weight_matrix(module).shape
        infos.append(LayerInfo(name, kind, widths[name], gram_width, gram_rows))
    for name in sorted((n for n in widths if n.startswith(HIDDEN_STATE_PREFIX)),
                       key=lambda n: int(n.rsplit(".", 1)[1])):
        infos.append(LayerInfo(name, HIDDEN_STATE_KIND, widths[name], 1, 0))  # no Gram
    return infos


