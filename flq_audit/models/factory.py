"""Build a model from user code: ``path/file.py:function`` or ``package.module:function``.

The module may also define ``map_checkpoint_key(key: str) -> str | None``: it renames the
keys of published checkpoints to the module's own names (``None`` drops a key).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from torch import nn

from flq_audit.errors import ModelBuildError, ModelNotFoundError

KEY_MAPPER_NAME = "map_checkpoint_key"
KeyMapper = Callable[[str], "str | None"]


def build_from_factory(target: str) -> tuple[nn.Module, KeyMapper | None]:
    """Call the factory named by ``target`` and return its module and optional key mapper."""
    location, _, func_name = target.rpartition(":")
    if not location or not func_name:
        raise ModelBuildError(
            f"model factory {target!r} must look like 'path/file.py:function' "
            "or 'package.module:function'"
        )
    module = _import(location, target)
    factory = getattr(module, func_name, None)
    if not callable(factory):
        names = sorted(n for n in dir(module) if not n.startswith("_"))
        raise ModelBuildError(
            f"model factory {target!r}: {location!r} has no function {func_name!r}; "
            f"it defines {names[:15]}"
        )
    try:
        model = factory()
    except Exception as err:
        raise ModelBuildError(f"model factory {target!r} raised {err!r}") from err
    if not isinstance(model, nn.Module):
        raise ModelBuildError(
            f"model factory {target!r} returned {type(model).__name__}, expected torch.nn.Module"
        )
    mapper = getattr(module, KEY_MAPPER_NAME, None)
    return model, mapper if callable(mapper) else None


def _import(location: str, target: str) -> ModuleType:
    if location.endswith(".py"):
        path = Path(location).expanduser().resolve()
        if not path.is_file():
            raise ModelNotFoundError(
                f"model factory file {location!r} does not exist", path=location)
        name = f"flq_audit_user_model_{abs(hash(str(path)))}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ModelBuildError(f"cannot import {location!r}", path=location)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as err:
            raise ModelBuildError(f"importing {location!r} raised {err!r}", path=location) from err
        return module
    try:
        return importlib.import_module(location)
    except ImportError as err:
        raise ModelBuildError(f"model factory {target!r}: cannot import {location!r} ({err})") from err
