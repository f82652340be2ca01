"""Layers that are parameters: a bare ``nn.Parameter`` multiplied into its input by a tensor op.

Research code often writes a layer as ``self.W_in = nn.Parameter(...)`` and ``x @ self.W_in.T``
(or ``F.linear(x, W)``, ``torch.matmul``, ``torch.mm``/``addmm``, ``torch.einsum``). While the
probe replays, a :class:`torch.overrides.TorchFunctionMode` sees every such op. A parameter is
recognised by object identity (and followed through ``.T``, ``.t()``, ``transpose``,
``permute``, ``.to()`` and other same-shape copies); the op says which of its dimensions are
contracted with the input, so the input space, and the Gram's, comes from the op, not from
the shape:

- ``x @ W.T``, ``F.linear(x, W)``: input ``x``, features = ``W``'s dim 1, matrix ``W``;
- ``x @ W``: features = ``W``'s dim 0, matrix ``Wᵀ``;
- ``W @ x``: features = ``W``'s dim 1, input ``x`` with its last two axes swapped;
- ``einsum`` with two operands, one of them the parameter: the parameter's indices that the
  other operand shares and the output lacks are its input dimensions (in the other operand's
  order); the other operand is laid out (sample, other indices, contracted indices).

The captured activation is the other operand flattened per sample, as for a ``Linear``
applied per token. A parameter used by several ops in one forward pass (applied per
position in a loop, or tied) has the operands of all its uses concatenated along the feature
axis, in call order; every use must contract the same dimensions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from flq_audit.store._records import LayerInfo, parameter_input_dims, parameter_kind

#: What one use of a parameter gives: (parameter name, its input dims, the input, op name).
UseCallback = Callable[[str, tuple[int, ...], torch.Tensor, str], None]

_MATMULS = {"matmul", "__matmul__", "mm"}
_SAME_SHAPE = {"to", "float", "double", "half", "bfloat16", "contiguous", "clone", "detach",
               "type_as", "type", "cpu", "cuda", "requires_grad_"}


@dataclass(frozen=True)
class ParameterLayer:
    """A parameter read as a weight by a tensor op (``input_dims``: its contracted dims)."""

    name: str
    parameter: torch.Tensor = field(repr=False)
    input_dims: tuple[int, ...]

    @property
    def kind(self) -> str:
        return parameter_kind(self.input_dims)

    def matrix(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The weight as ``d_out × d_in``, ``d_in`` the product of the input dims."""
        return oriented(self.parameter if weight is None else weight, self.input_dims)


def oriented(weight: torch.Tensor, input_dims: tuple[int, ...]) -> torch.Tensor:
    """``weight`` permuted to (other dims, input dims) and flattened to a matrix."""
    if any(d >= weight.dim() for d in input_dims):
        raise ValueError(f"input dims {input_dims} do not fit a weight of shape "
                         f"{tuple(weight.shape)}")
    out_dims = [d for d in range(weight.dim()) if d not in input_dims]
    d_in = math.prod(weight.shape[d] for d in input_dims)
    return weight.permute(*out_dims, *input_dims).reshape(-1, d_in)


@dataclass
class _Tracked:
    """A tensor that is a parameter seen through a permutation: dim i is parameter dim perm[i]."""

    tensor: torch.Tensor
    name: str
    perm: tuple[int, ...]
    parameter_shape: tuple[int, ...]


class ParameterUses(TorchFunctionMode):
    """Report every contraction of a watched parameter with a non-parameter operand."""

    def __init__(self, watched: Mapping[int, str], on_use: UseCallback) -> None:
        super().__init__()
        self.on_use = on_use
        self._tracked: dict[int, _Tracked] = {}
        self._watched = dict(watched)

    def reset(self, parameters: Mapping[str, torch.Tensor]) -> None:
        """Forget derived views (call before each forward pass)."""
        self._tracked = {id(p): _Tracked(p, name, tuple(range(p.dim())), tuple(p.shape))
                         for name, p in parameters.items() if id(p) in self._watched}

    def _lookup(self, value: Any) -> _Tracked | None:
        if not isinstance(value, torch.Tensor):
            return None
        found = self._tracked.get(id(value))
        return found if found is not None and found.tensor is value else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name == "__get__":
            name = getattr(getattr(func, "__self__", None), "__name__", "")
        if args:
            self._follow(name, args, kwargs, result)
            self._contract(name, args, kwargs)
        return result

    def _follow(self, name: str, args: tuple, kwargs: dict, result: Any) -> None:
        """Keep tracking a parameter through views and copies that only reorder its axes."""
        source = self._lookup(args[0])
        if source is None or not isinstance(result, torch.Tensor):
            return
        perm = list(source.perm)
        ndim = len(perm)
        if name in ("T", "t"):
            perm = perm[::-1]
        elif name == "mT" and ndim >= 2:
            perm[-2], perm[-1] = perm[-1], perm[-2]
        elif name in ("transpose", "swapaxes", "swapdims"):
            a, b = (int(d) % ndim for d in _positional(args[1:], kwargs, ("dim0", "dim1")))
            perm[a], perm[b] = perm[b], perm[a]
        elif name == "permute":
            dims = args[1] if len(args) == 2 and isinstance(args[1], list | tuple) else args[1:]
            perm = [perm[int(d) % ndim] for d in (dims or kwargs.get("dims", ()))]
        elif name not in _SAME_SHAPE:
            return
        if tuple(result.shape) == tuple(source.parameter_shape[d] for d in perm):
            self._tracked[id(result)] = _Tracked(result, source.name, tuple(perm),
                                                 source.parameter_shape)

    def _contract(self, name: str, args: tuple, kwargs: dict) -> None:
        if name in _MATMULS or name == "addmm":
            left, right = (args[1], args[2]) if name == "addmm" else (
                _positional(args, kwargs, ("input", "other")))
            self._matmul(left, right, "addmm" if name == "addmm" else "matmul")
        elif name == "__rmatmul__":
            self._matmul(args[1], args[0], "matmul")
        elif name == "linear":
            x, w = _positional(args, kwargs, ("input", "weight"))
            tracked = self._lookup(w)
            if tracked is not None and w.dim() == 2 and self._lookup(x) is None:
                self._use(tracked, (1,), x, "linear")
        elif name == "einsum" and isinstance(args[0], str):
            operands = list(args[1]) if len(args) == 2 and isinstance(args[1], list | tuple) \
                else list(args[1:])
            self._einsum(args[0], operands)

    def _matmul(self, left: Any, right: Any, op: str) -> None:
        tracked_left, tracked_right = self._lookup(left), self._lookup(right)
        if (tracked_left is None) == (tracked_right is None):
            return
        if tracked_right is not None and right.dim() == 2 and left.dim() >= 2:
            self._use(tracked_right, (0,), left, op)
        elif tracked_left is not None and left.dim() == 2 and right.dim() >= 2:
            self._use(tracked_left, (1,), right.transpose(-1, -2), op)

    def _einsum(self, equation: str, operands: list) -> None:
        if len(operands) != 2:
            return
        found = [self._lookup(o) for o in operands]
        if sum(t is not None for t in found) != 1:
            return
        w_index = 0 if found[0] is not None else 1
        tracked, weight, other = found[w_index], operands[w_index], operands[1 - w_index]
        assert tracked is not None
        parsed = parse_einsum(equation, [o.dim() for o in operands])
        if parsed is None:
            return
        inputs, output = parsed
        w_subs, o_subs = inputs[w_index], inputs[1 - w_index]
        if any(s.startswith(".") for s in w_subs) or len(set(w_subs)) != len(w_subs):
            return
        contracted = [s for s in o_subs if s in w_subs and s not in output]
        shared_out = [s for s in w_subs if s in o_subs and s in output]
        summed_away = [s for s in w_subs if s not in o_subs and s not in output]
        if not contracted or shared_out or summed_away or weight.dim() != len(w_subs):
            return
        kept = [i for i, s in enumerate(o_subs) if s not in contracted]
        if not kept:
            return
        order = [*kept, *(o_subs.index(s) for s in contracted)]
        dims = tuple(w_subs.index(s) for s in contracted)
        self._use(tracked, dims, other.permute(*order), "einsum")

    def _use(self, tracked: _Tracked, dims: tuple[int, ...], other: torch.Tensor,
             op: str) -> None:
        self.on_use(tracked.name, tuple(tracked.perm[d] for d in dims), other, op)


def _positional(args: tuple, kwargs: dict, names: tuple[str, ...]) -> tuple:
    values = list(args[: len(names)])
    values += [kwargs.get(n) for n in names[len(values):]]
    return tuple(values)


def parse_einsum(equation: str, ndims: list[int]) -> tuple[list[list[str]], list[str]] | None:
    """Subscripts per operand and of the output, ``...`` expanded to ``.0``, ``.1``…
    (``None`` when the equation does not fit the operands)."""
    equation = equation.replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ndims):
        return None
    inputs = []
    for term, ndim in zip(terms, ndims, strict=True):
        subs = _expand(term, ndim)
        if subs is None:
            return None
        inputs.append(subs)
    if arrow:
        width = max((ndim - len(t.replace("...", "")) for t, ndim in zip(terms, ndims,
                                                                          strict=True)), default=0)
        output = _expand(rhs, len(rhs.replace("...", "")) + width if "..." in rhs else len(rhs))
        if output is None:
            return None
    else:
        counts: dict[str, int] = {}
        for subs in inputs:
            for s in subs:
                counts[s] = counts.get(s, 0) + 1
        output = sorted(s for s, c in counts.items() if c == 1 or s.startswith("."))
    return inputs, output


def _expand(term: str, ndim: int) -> list[str] | None:
    head, dots, tail = term.partition("...")
    letters = len(head) + len(tail)
    if not dots:
        return list(term) if len(term) == ndim else None
    if ndim < letters:
        return None
    # broadcast dims align from the right: name them by distance from the last one
    n = ndim - letters
    return [*head, *(f".{n - i}" for i in range(n)), *tail]


def watched_parameters(model: nn.Module, exclude: set[int]) -> dict[int, str]:
    """``id`` → name of every parameter with 2 or more dimensions not in ``exclude``."""
    return {id(p): name for name, p in model.named_parameters()
            if p.dim() >= 2 and id(p) not in exclude}


NOT_USED = "not multiplied into the input by matmul, F.linear or einsum in a forward pass"


def discover_parameter_layers(
    model: nn.Module, forward: Callable[[], int], *, exclude: set[int],
) -> tuple[dict[str, ParameterLayer], dict[str, str]]:
    """Run ``forward`` (one probe batch; returns its sample count) and sort every parameter
    with 2 or more dimensions, except those in ``exclude``, into layers and refusals.

    Returns ``({name: layer}, {name: why it is not a layer})``.
    """
    watched = watched_parameters(model, exclude)
    if not watched:
        return {}, {}
    uses: dict[str, list[tuple[tuple[int, ...], int, str]]] = {}

    def record(name: str, dims: tuple[int, ...], other: torch.Tensor, op: str) -> None:
        uses.setdefault(name, []).append((dims, int(other.shape[0]), op))

    mode = ParameterUses(watched, record)
    params = {name: p for name, p in model.named_parameters() if id(p) in watched}
    mode.reset(params)
    with mode:
        samples = forward()
    layers, refused = {}, {}
    for name, parameter in params.items():
        seen = uses.get(name)
        if not seen:
            refused[name] = NOT_USED
            continue
        orientations = sorted({dims for dims, _, _ in seen})
        rows = sorted({n for _, n, _ in seen})
        if len(orientations) > 1:
            refused[name] = ("its ops contract different dimensions "
                             f"({', '.join(parameter_kind(d) for d in orientations)})")
        elif rows != [samples]:
            refused[name] = (f"the operand it multiplies has {rows[0]} rows for a batch of "
                             f"{samples} samples (no per-sample axis)")
        else:
            layers[name] = ParameterLayer(name, parameter, orientations[0])
    return layers, refused


def in_model_order(
    module: nn.Module, modules: dict[str, nn.Module], params: dict[str, ParameterLayer],
) -> dict[str, nn.Module | ParameterLayer]:
    """Weight modules in registration order; a module's own parameter layers come after its
    submodules (``blocks.*`` before a top-level unembedding ``W_U``)."""
    ordered: dict[str, nn.Module | ParameterLayer] = {}
    seen: set[int] = set()

    def walk(prefix: str, sub: nn.Module) -> None:
        if id(sub) in seen:
            return
        seen.add(id(sub))
        if prefix in modules:
            ordered[prefix] = modules[prefix]
        for child, inner in sub.named_children():
            walk(f"{prefix}.{child}" if prefix else child, inner)
        for local, _ in sub.named_parameters(recurse=False):
            name = f"{prefix}.{local}" if prefix else local
            if name in params:
                ordered[name] = params[name]

    walk("", module)
    return ordered


def candidate_parameters(module: nn.Module, modules: dict[str, nn.Module]) -> dict[str, str]:
    """Parameters with 2 or more dimensions outside ``modules``, with their shapes."""
    own = {id(m.weight) for m in modules.values() if isinstance(m.weight, torch.Tensor)}
    return {name: str(tuple(p.shape)) for name, p in module.named_parameters()
            if p.dim() >= 2 and id(p) not in own}


def refusals(why: Mapping[str, str]) -> str:
    """``why`` ({parameter: reason}) as the tail of an error message."""
    if not why:
        return ""
    shown = "; ".join(f"{name}: {reason}" for name, reason in list(why.items())[:12])
    more = f"; and {len(why) - 12} more" if len(why) > 12 else ""
    return f"; parameters that could be layers, and why they are not: {shown}{more}"


def unchecked(shapes: Mapping[str, str]) -> str:
    """Parameters (``{name: shape}``) that no forward pass checked, as an error's tail."""
    if not shapes:
        return ""
    shown = ", ".join(f"{name} {shape}" for name, shape in list(shapes.items())[:12])
    return f"; parameters that could be layers: {shown}"


def layers_of(
    module: nn.Module, infos: Sequence[LayerInfo],
) -> dict[str, nn.Module | ParameterLayer]:
    """The layers of ``module`` that ``infos`` name (modules, and parameters by their kind)."""
    named = dict(module.named_modules())
    parameters = dict(module.named_parameters())
    layers: dict[str, nn.Module | ParameterLayer] = {}
    for info in infos:
        dims = parameter_input_dims(info.kind)
        if dims is not None and info.name in parameters:
            layers[info.name] = ParameterLayer(info.name, parameters[info.name], dims)
        elif dims is None and info.name in named:
            layers[info.name] = named[info.name]
    return layers


def weight_key(name: str, layer: nn.Module | ParameterLayer) -> str:
    """The state-dict key of a layer's weight."""
    return name if isinstance(layer, ParameterLayer) else f"{name}.weight"


__all__ = [
    "NOT_USED", "ParameterLayer", "ParameterUses", "candidate_parameters",
    "discover_parameter_layers", "in_model_order", "layers_of", "oriented", "parse_einsum",
    "refusals", "unchecked", "watched_parameters", "weight_key",
]
