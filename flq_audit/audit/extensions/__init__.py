"""Per-step extensions of an audit (one file each), their protocol, and the registry of the
extensions that ``--extension NAME`` enables.

The built-ins are switched on by the plan itself (see :data:`BUILT_IN`). Others are enabled
by name: registered in this process with :func:`register_extension`, or declared by an
installed package under the entry-point group ``flq_audit.extensions`` (found when a name is
first asked for, imported only when named).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from flq_audit.audit.extensions.base import Extension, StepContext, StepExtension, stack_padded
from flq_audit.errors import OptionError

#: The entry-point group where installed packages declare per-step extensions.
ENTRY_POINT_GROUP = "flq_audit.extensions"
#: The built-in extensions and what switches each on (they are not named with --extension).
BUILT_IN = {
    "nonfinite": "always on",
    "predictions": "on when the model's output has one logit per class of the probe",
    "hidden_states": "switched on by --hidden-states",
    "fl": "switched on by --fl-loss, --fl-lr and --fl-batches",
}
#: A class, or any callable without arguments, that makes the extension.
Factory = Callable[[], StepExtension]
_REGISTRY: dict[str, Factory] = {}
_ENTRY_POINTS: dict[str, Any] | None = None


def register_extension(factory: Any, *, name: str | None = None) -> Any:
    """Let ``--extension NAME`` enable an extension (``name``: the factory's ``name``)."""
    key = name if name is not None else getattr(factory, "name", None)
    if not isinstance(key, str) or not key.isidentifier() or not callable(factory):
        raise OptionError(f"register_extension({factory!r}): an extension class (or a callable "
                          "making one) with a name that is an identifier")
    if key in BUILT_IN:
        raise OptionError(f"extension {key!r} is built in ({BUILT_IN[key]}): choose another name")
    if _REGISTRY.get(key, factory) is not factory:
        raise OptionError(f"extension {key!r} is already registered ({_REGISTRY[key]!r})")
    _REGISTRY[key] = factory
    return factory


def extension_names() -> list[str]:
    """The names ``--extension`` takes: registered here or declared by installed packages."""
    return sorted({*_REGISTRY, *_entry_points()})


def named_extensions(names: Sequence[str]) -> list[StepExtension]:
    """One new instance of each named extension, in the order given."""
    if len(set(names)) != len(names):
        raise OptionError(f"--extension: {sorted(n for n in set(names) if names.count(n) > 1)} "
                          "given more than once")
    return [_make(name) for name in names]


def _make(name: str) -> StepExtension:
    if name in BUILT_IN:
        raise OptionError(f"--extension {name}: {name!r} is built in, {BUILT_IN[name]}")
    point = None if name in _REGISTRY else _entry_points().get(name)
    if name not in _REGISTRY and point is None:
        raise OptionError(
            f"--extension {name}: no such extension; available: "
            f"{', '.join(extension_names()) or 'none installed'}",
            hint=f"Install the package that declares {name!r} in the entry-point group "
                 f"{ENTRY_POINT_GROUP}, or call register_extension() first.")
    try:
        factory = _REGISTRY[name] if point is None else point.load()
        made = factory()
    except Exception as err:  # the plugin's own failure, in one line
        where = "" if point is None else (
            f": the entry point {point.name} = {point.value} of the distribution {_dist(point)}")
        raise OptionError(
            f"--extension {name}{where} could not be loaded: {type(err).__name__}: "
            f"{getattr(err, 'message', err)}",
            hint=None if point is None else f"Fix or uninstall {_dist(point)}.") from None
    if not isinstance(made, StepExtension) or made.name != name:
        raise OptionError(f"--extension {name}: {factory!r} made {made!r}, not a per-step "
                          f"extension named {name!r}",
                          hint="Subclass flq_audit.audit.extensions.Extension; set its name.")
    return made


def _entry_points() -> dict[str, Any]:
    """The declared entry points by name, found once (none is imported here)."""
    global _ENTRY_POINTS
    if _ENTRY_POINTS is None:
        from importlib.metadata import entry_points

        _ENTRY_POINTS = {p.name: p for p in entry_points(group=ENTRY_POINT_GROUP)}
    return _ENTRY_POINTS


def _dist(point: Any) -> str:
    dist = getattr(point, "dist", None)
    return "?" if dist is None else f"{dist.name} {dist.version}"


__all__ = ["BUILT_IN", "ENTRY_POINT_GROUP", "Extension", "StepContext", "StepExtension",
           "extension_names", "named_extensions", "register_extension", "stack_padded"]
