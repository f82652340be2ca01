"""Build the paper's plain networks (MLP, CNN) from a small JSON spec.

MLP spec::

    {"type": "mlp", "in_features": 64, "widths": [128, 128, 128, 128],
     "out_features": 10, "activation": "gelu", "bias": true}

and optionally ``"output_scale": 0.03125``, a number multiplying the read-out's output (the
``1/√width`` of a mean-field output; default 1.0, which leaves the output as the layer gives it).

CNN spec::

    {"type": "cnn", "in_channels": 1, "input_size": [8, 8], "channels": [16, 16],
     "kernel_sizes": [3, 3], "padding": [1, 1], "pool_after": [0], "activation": "relu",
     "num_classes": 10, "bias": true}

Module names are stable (``layers.0`` ... for the MLP, ``features.N`` and ``classifier`` for
the CNN) so checkpoints saved from these modules load back by name.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flq_audit.audit.json_files import read_json_object
from flq_audit.errors import ModelBuildError, ModelNotFoundError

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU, "identity": nn.Identity,
}


class MLP(nn.Module):
    """Fully connected network: ``len(widths)`` hidden layers and a linear read-out, whose
    output is multiplied by ``output_scale``."""

    def __init__(
        self, in_features: int, widths: list[int], out_features: int,
        activation: str = "gelu", bias: bool = True, output_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if not math.isfinite(output_scale):
            raise ValueError(f"output_scale must be finite, got {output_scale}")
        self.output_scale = float(output_scale)
        sizes = [in_features, *widths, out_features]
        self.layers = nn.ModuleList(
            nn.Linear(a, b, bias=bias) for a, b in itertools.pairwise(sizes)
        )
        self.act = _activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.layers[:-1]:
            x = self.act(layer(x))
        out = self.layers[-1](x)
        return out if self.output_scale == 1.0 else out * self.output_scale


class CNN(nn.Module):
    """Convolutions with optional max-pooling, then a linear classifier."""

    def __init__(
        self, in_channels: int, input_size: list[int], channels: list[int],
        kernel_sizes: list[int], num_classes: int, padding: list[int] | None = None,
        pool_after: list[int] | None = None, activation: str = "relu", bias: bool = True,
    ) -> None:
        super().__init__()
        padding = padding if padding is not None else [k // 2 for k in kernel_sizes]
        pool_after = pool_after or []
        if not len(channels) == len(kernel_sizes) == len(padding):
            raise ModelBuildError("cnn spec: channels, kernel_sizes and padding differ in length")
        modules: list[nn.Module] = []
        previous = in_channels
        height, width = input_size
        for i, (out, k, p) in enumerate(zip(channels, kernel_sizes, padding, strict=True)):
            modules += [nn.Conv2d(previous, out, k, padding=p, bias=bias), _activation(activation)]
            height, width = height + 2 * p - k + 1, width + 2 * p - k + 1
            if i in pool_after:
                modules.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            previous = out
        self.input_shape = (in_channels, *input_size)
        self.features = nn.Sequential(*modules)
        self.classifier = nn.Linear(previous * height * width, num_classes, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], *self.input_shape)
        return self.classifier(self.features(x).flatten(1))


_BUILDERS = {"mlp": MLP, "cnn": CNN}


def build_from_spec(spec: Mapping[str, Any], *, origin: str = "spec") -> nn.Module:
    """Instantiate the network a spec describes."""
    kind = str(spec.get("type", "")).lower()
    if kind not in _BUILDERS:
        raise ModelBuildError(
            f"{origin}: unknown model type {spec.get('type')!r}; expected one of {list(_BUILDERS)}"
        )
    params = {k: v for k, v in spec.items() if k != "type"}
    for key in _SIZES & set(params):
        values = params[key] if isinstance(params[key], list) else [params[key]]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
            raise ModelBuildError(f"{origin}: {key} must be positive integers, got "
                                  f"{params[key]!r}", path=origin)
    for key, (wanted, what) in _TYPED.items():
        if key in params and (not isinstance(params[key], wanted)
                              or (isinstance(params[key], bool) and wanted is not bool)):
            raise ModelBuildError(f"{origin}: {key} must be {what}, got {params[key]!r} "
                                  f"({type(params[key]).__name__})", path=origin)
    try:
        return _BUILDERS[kind](**params)
    except (TypeError, ValueError, RuntimeError, MemoryError) as err:
        raise ModelBuildError(f"{origin}: invalid {kind} spec ({err})", path=origin) from err


#: Spec fields of one JSON type: the type and how messages name it.
_TYPED: dict[str, tuple[type | tuple[type, ...], str]] = {
    "bias": (bool, "true or false (a JSON boolean)"), "activation": (str, "a string"),
    "output_scale": ((int, float), "a number"),
}
#: Spec fields that are sizes: positive integers (or lists of them).
_SIZES = {"in_features", "out_features", "widths", "in_channels", "channels", "kernel_sizes",
          "num_classes"}


def load_spec(path: str | Path) -> dict[str, Any]:
    """Read a JSON model spec file."""
    return read_json_object(path, "model spec", missing=ModelNotFoundError,
                            invalid=ModelBuildError)


def _activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[str(name).lower()]()
    except KeyError:
        raise ModelBuildError(
            f"unknown activation {name!r}; expected one of {list(ACTIVATIONS)}"
        ) from None
