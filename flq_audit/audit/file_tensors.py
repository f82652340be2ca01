"""A transformers checkpoint's own tensors, read from its files one at a time.

A replay in a narrower dtype than the checkpoint's (``--dtype bfloat16`` of a float32
checkpoint) rounds the model's weights; the Grams must not be formed from them.
:class:`FileTensors` maps the model's parameter names to the checkpoint's tensors as stored
(safetensors through ``safe_open``, pickles memory-mapped), read when asked for and never
kept: a step holds at most one of them besides the model.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch
from torch import nn

from flq_audit.errors import ModelBuildError

#: The checkpoint dtypes each replay dtype holds exactly (its own, and narrower floats).
_EXACT_IN: dict[torch.dtype, frozenset[torch.dtype]] = {
    torch.float64: frozenset({torch.float64, torch.float32, torch.float16, torch.bfloat16}),
    torch.float32: frozenset({torch.float32, torch.float16, torch.bfloat16}),
    torch.float16: frozenset({torch.float16}),
    torch.bfloat16: frozenset({torch.bfloat16}),
}


def holds_exactly(replay: torch.dtype, stored: torch.dtype) -> bool:
    """Whether a ``stored`` tensor cast to ``replay`` keeps every value (non-floats: yes)."""
    return not stored.is_floating_point or stored in _EXACT_IN.get(replay, frozenset({replay}))


def config_dtype(folder: Path | None) -> torch.dtype | None:
    """The floating dtype ``folder/config.json`` declares (``dtype``, or the older
    ``torch_dtype``); ``None`` when it declares none."""
    if folder is None:
        return None
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    name = config.get("dtype") or config.get("torch_dtype") if isinstance(config, dict) else None
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else None


def _weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    return files or sorted(p for p in folder.glob("*.bin") if p.name != "training_args.bin")


def _stored_dtypes(files: list[Path]) -> dict[str, tuple[Path, torch.dtype | None]]:
    """Each tensor's file and (for safetensors, from the header alone) dtype."""
    from safetensors import safe_open

    found: dict[str, tuple[Path, torch.dtype | None]] = {}
    for path in files:
        if path.suffix != ".safetensors":
            for key, tensor in _pickled(path).items():
                found[key] = (path, tensor.dtype if isinstance(tensor, torch.Tensor) else None)
            continue
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open has no __iter__)
                found[key] = (path, _SAFETENSORS_DTYPES.get(handle.get_slice(key).get_dtype()))
    return found


def _renaming(module: nn.Module) -> Callable[[str], str]:
    """transformers' own renaming of checkpoint keys to the model's (``embed_out.`` →
    ``lm_head.`` of GPT-NeoX in transformers 5); keys unchanged where it has none. Tensors
    that transformers converts (fuses, splits) are not renamed: they match no parameter."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming, apply_renamings

        # a transformers model (an nn.Module to this module's callers)
        transforms = get_model_conversion_mapping(module)  # type: ignore[arg-type]
        renamings = [t for t in transforms if type(t) is WeightRenaming]
    except Exception:  # another transformers version, or not a transformers model
        return lambda key: key
    return lambda key: apply_renamings(key, renamings) if renamings else key


def _pickled(path: Path) -> dict[str, torch.Tensor]:
    """A pickled state dict, memory-mapped (its tensors are read when touched)."""
    loaded = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    return loaded if isinstance(loaded, dict) else {}


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
                       "BF16": torch.bfloat16}


class FileTensors(Mapping[str, torch.Tensor]):
    """The checkpoint's tensors under ``module``'s parameter names, read on access.

    A parameter is found under its own name, a tied twin's, or with the model's
    ``base_model_prefix`` added or removed (a base model's checkpoint in a head model); a
    tensor read is checked against the loaded parameter (same shape, and equal to it once
    cast to the parameter's dtype), so a renamed or converted tensor is never taken for it.
    """

    def __init__(self, folder: Path, module: nn.Module, *, step: int | None = None) -> None:
        self.folder, self.step = Path(folder), step
        self._stored = _stored_dtypes(_weight_files(self.folder))
        rename = _renaming(module)
        self._by_model_key = {rename(key): key for key in self._stored}
        self._params = dict(module.named_parameters(remove_duplicate=False))
        prefix = str(getattr(module, "base_model_prefix", "") or "")
        twins: dict[int, list[str]] = {}
        for name, param in self._params.items():
            twins.setdefault(id(param), []).append(name)
        self._keys = {name: key for name, param in self._params.items()
                      if (key := self._find(twins[id(param)], prefix)) is not None}

    def _find(self, names: list[str], prefix: str) -> str | None:
        for name in names:
            dotted = f"{prefix}." if prefix else ""
            for key in (name, name.removeprefix(dotted), dotted + name):
                if key in self._by_model_key:
                    return self._by_model_key[key]
        return None

    def needed(self, dtype: torch.dtype) -> bool:
        """Whether a model in ``dtype`` rounds any stored tensor (so Grams need the files)."""
        return any(stored is None or not holds_exactly(dtype, stored)
                   for _, stored in self._stored.values())

    def __contains__(self, name: object) -> bool:
        return name in self._params

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._params:
            raise KeyError(name)
        key = self._keys.get(name)
        if key is None:
            raise ModelBuildError(
                f"step {self.step}: no tensor of {str(self.folder)!r} holds the weight "
                f"{name!r}, and the replay's model holds it rounded", step=self.step,
                path=self.folder, hint="Replay in the checkpoint's own dtype (--dtype).")
        path = self._stored[key][0]
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                tensor = handle.get_tensor(key)
        else:
            tensor = _pickled(path)[key]
        self._check(name, key, tensor)
        return tensor

    def _check(self, name: str, key: str, tensor: torch.Tensor) -> None:
        param = self._params[name].detach().cpu()
        same = tensor.shape == param.shape and torch.equal(tensor.to(param.dtype), param)
        if not same:
            raise ModelBuildError(
                f"step {self.step}: tensor {key!r} of {str(self.folder)!r} is not the weight "
                f"transformers loaded for {name!r} (converted on loading?)", step=self.step,
                path=self.folder, hint="Replay in the checkpoint's own dtype (--dtype), whose "
                "weights the Grams can take from the model.")

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


__all__ = ["FileTensors", "config_dtype", "holds_exactly"]
