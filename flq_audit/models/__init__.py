"""Rebuild a network and load a checkpoint's state dict into it, strictly."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from flq_audit.errors import FlqAuditWarning, ModelBuildError, ModelNotFoundError
from flq_audit.models.factory import KeyMapper, build_from_factory
from flq_audit.models.spec import CNN, MLP, build_from_spec, load_spec
from flq_audit.weights import fit_key_prefix

# Buffers that optimisers and norm layers add which never change a forward pass.
_IGNORABLE_KEY_SUFFIXES = ("num_batches_tracked",)


@dataclass(frozen=True)
class BuiltModel:
    """A module ready for checkpoints, with the key mapper its factory provided."""

    module: nn.Module
    origin: str
    key_mapper: KeyMapper | None = None


def build_model(model: str) -> BuiltModel:
    """Build from a JSON spec file (``*.json``) or a factory (``file.py:fn``, ``pkg.mod:fn``)."""
    if model.lower().endswith(".json"):
        return BuiltModel(build_from_spec(load_spec(model), origin=model), origin=model)
    if ":" in model:
        module, mapper = build_from_factory(model)
        return BuiltModel(module, origin=model, key_mapper=mapper)
    if Path(model).exists():
        raise ModelBuildError(f"--model {model!r}: expected a .json spec or 'file.py:function'")
    raise ModelNotFoundError(
        f"--model {model!r} is neither an existing .json spec nor 'module:function'",
        hint="Examples: --model run/model_spec.json, --model nets.py:make_net",
    )


def load_weights(
    built: BuiltModel, state: dict[str, torch.Tensor], *, step: int | None
) -> dict[str, torch.Tensor]:
    """Load ``state`` into the module; any missing or unexpected parameter is an error.

    Returns the state dict under the module's own key names (after ``map_checkpoint_key``).
    """
    state = map_keys(built, state)
    module = built.module
    own = module.state_dict()
    buffers = {name for name, _ in module.named_buffers()}
    tied = _tied_groups(module)
    missing = sorted(
        k for k in own
        if k not in state and k not in buffers and not any(t in state for t in tied.get(k, ()))
    )
    unexpected = sorted(
        k for k in state if k not in own and not k.endswith(_IGNORABLE_KEY_SUFFIXES)
    )
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_short(unexpected)}")
        raise ModelBuildError(
            f"step {step}: the checkpoint does not fit model {built.origin!r}: " + "; ".join(parts),
            step=step,
            hint="Check --model, or give the factory module a map_checkpoint_key(key) function.",
        )
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own if k in state and state[k].shape != own[k].shape
    ]
    if mismatched:
        raise ModelBuildError(
            f"step {step}: tensor shapes differ from model {built.origin!r}: {_short(mismatched)}",
            step=step,
        )
    missing_buffers = sorted(k for k in own if k not in state and k in buffers
                             and not k.endswith(_IGNORABLE_KEY_SUFFIXES))
    if missing_buffers:
        warnings.warn(
            f"step {step}: the checkpoint lacks buffer(s) {_short(missing_buffers)}; the model "
            "keeps its initial values for them, which may change its forward pass",
            FlqAuditWarning, stacklevel=2,
        )
    filtered = {k: v for k, v in state.items() if k in own}
    module.load_state_dict(filtered, strict=False)
    return filtered


def _tied_groups(module: nn.Module) -> dict[str, tuple[str, ...]]:
    """Keys of the state dict that share storage (tied weights, e.g. an LM head)."""
    by_pointer: dict[int, list[str]] = {}
    for key, tensor in module.state_dict(keep_vars=True).items():
        by_pointer.setdefault(tensor.data_ptr(), []).append(key)
    return {k: tuple(x for x in keys if x != k) for keys in by_pointer.values() if len(keys) > 1
            for k in keys}


def map_keys(built: BuiltModel, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename checkpoint keys with the factory's ``map_checkpoint_key`` (if any), and drop a
    prefix that every key has and the model's keys lack (Lightning's ``model.``)."""
    if built.key_mapper is None:
        return fit_key_prefix(state, built.module.state_dict().keys())
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new_key = built.key_mapper(key)
        if new_key is not None:
            mapped[new_key] = value
    return mapped


def _short(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}] ({len(items)})"


def first_layer_takes(model: nn.Module) -> str:
    """``", whose first layer 'layers.0' takes 6 input features"`` when the first weight layer
    (in module order) is a linear or a convolution, else ``""`` (for probe messages)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            return f", whose first layer {name!r} takes {module.in_features} input features"
        if isinstance(module, nn.modules.conv._ConvNd):
            return f", whose first layer {name!r} takes {module.in_channels} input channels"
        if any(True for _ in module.parameters(recurse=False)):
            return ""
    return ""


__all__ = [
    "CNN",
    "MLP",
    "BuiltModel",
    "build_from_spec",
    "build_model",
    "first_layer_takes",
    "load_spec",
    "load_weights",
    "map_keys",
]
