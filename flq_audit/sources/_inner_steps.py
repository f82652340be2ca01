"""Steps stored inside checkpoints, read without loading tensors or running any code.

A torch pickle's top-level dict (``{"state_dict": ..., "epoch": 3, "global_step": 1200}``) is
unpickled with every class replaced by an inert stand-in and every tensor storage by
``None``; a safetensors file's ``__metadata__`` is read from its JSON header.
"""

from __future__ import annotations

import json
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

from flq_audit.constants import SAFETENSORS_EXTENSIONS

#: The first pickle of a legacy (non-zip) ``torch.save`` file.
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
#: A top-level key every PyTorch Lightning checkpoint carries.
LIGHTNING_VERSION_KEY = "pytorch-lightning_version"
#: Where Lightning keeps the optimizer step count.
LIGHTNING_STEP_KEY = "global_step"
#: Safetensors headers longer than this are not read (a corrupt length field).
_MAX_HEADER_BYTES = 100 * 2**20


class _Inert:
    """Stands for any object a checkpoint pickles: constructing it runs nothing."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __call__(self, *args: object, **kwargs: object) -> _Inert:
        return _Inert()

    def __setstate__(self, state: object) -> None:
        pass

    def __setitem__(self, key: object, value: object) -> None:
        pass

    def append(self, item: object) -> None:
        pass

    def extend(self, items: object) -> None:
        pass


class _Dict(dict):
    """An ``OrderedDict`` stand-in that accepts the attributes pickles set on it."""


_KNOWN = {("collections", "OrderedDict"): _Dict, ("builtins", "set"): set,
          ("builtins", "frozenset"): frozenset}


class _Peeker(pickle.Unpickler):
    """An unpickler that builds containers and scalars only."""

    def find_class(self, module: str, name: str) -> Any:
        return _KNOWN.get((module, name), _Inert)

    def persistent_load(self, pid: object) -> None:
        return None


def peek_pickle(path: Path) -> Any:
    """The object a torch pickle holds, tensors as inert stand-ins; ``None`` if unreadable."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith("data.pkl")]
                if not names:
                    return None
                with archive.open(min(names, key=len)) as handle:
                    return _Peeker(handle).load()
        with open(path, "rb") as handle:
            if _Peeker(handle).load() != _TORCH_LEGACY_MAGIC:
                return None
            _Peeker(handle).load()  # protocol version
            _Peeker(handle).load()  # system info
            return _Peeker(handle).load()
    except Exception:  # a broken file is reported when its weights are loaded
        return None


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's header ({} when absent or unreadable)."""
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > _MAX_HEADER_BYTES:
                return {}
            header = json.loads(handle.read(length))
    except (OSError, ValueError, struct.error):
        return {}
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}


def stored_steps(path: Path) -> dict[str, int]:
    """The integer entries a checkpoint carries beside its tensors (``epoch``, ``step`` ...)."""
    if path.suffix.lower() in SAFETENSORS_EXTENSIONS:
        out = {}
        for key, text in safetensors_metadata(path).items():
            try:
                out[key] = int(text.strip())
            except ValueError:
                continue
        return out
    obj = peek_pickle(path)
    if not isinstance(obj, dict):
        return {}
    return {str(k): v for k, v in obj.items() if isinstance(v, int) and not isinstance(v, bool)}


def lightning_step(path: Path) -> int | None:
    """A PyTorch Lightning checkpoint's ``global_step`` (``None`` for other files)."""
    obj = peek_pickle(path)
    if not isinstance(obj, dict) or LIGHTNING_VERSION_KEY not in obj:
        return None
    step = obj.get(LIGHTNING_STEP_KEY)
    return step if isinstance(step, int) and not isinstance(step, bool) else None
