"""Where checkpoints come from: a registry of source families.

Families are tried in order, the first whose ``guess_can_open(spec)`` is true opens the
``SOURCE``: the built-ins (``local``, then ``hub``), then families added by
:func:`register_source` or declared by installed packages under the entry-point group
``flq_audit.sources`` (read once, when a source is first resolved). ``before="local"`` puts
a family ahead of a built-in, for a folder layout the local family would otherwise claim.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar, overload

from flq_audit.errors import CheckpointNotFoundError, SourceError
from flq_audit.sources._base import CheckpointRef, CheckpointSource, LeftOut
from flq_audit.sources.hub import HubSource
from flq_audit.sources.local import LocalFolderSource
from flq_audit.sources.revisions import RevisionInfo, parse_revision
from flq_audit.sources.steps import parse_step, select_steps

#: The entry-point group where installed packages declare source families.
ENTRY_POINT_GROUP = "flq_audit.sources"


class SourceFamily(Protocol):
    """A source class: its family name, its claim test and its constructor."""

    @property
    def name(self) -> str: ...

    def guess_can_open(self, spec: str) -> bool: ...

    def __call__(self, *args: Any, **kwargs: Any) -> CheckpointSource: ...


#: Families tried in this order by :func:`open_source`.
SOURCE_FAMILIES: dict[str, SourceFamily] = {}
_ENTRY_POINTS_LOADED = False

Family = TypeVar("Family", bound=SourceFamily)


@overload
def register_source(cls: Family, *, before: str | None = None) -> Family: ...


@overload
def register_source(cls: None = None, *, before: str | None = None
                    ) -> Callable[[Family], Family]: ...


def register_source(cls: Any = None, *, before: str | None = None) -> Any:
    """Add a source family to the registry; ``before=NAME`` tries it ahead of family NAME.

    Without ``before`` it is tried after every family registered so far. Usable as a
    decorator, with or without arguments (``@register_source(before="local")``). Registering
    the same class again moves it; another class under a taken name is an error.
    """
    if cls is None:
        return lambda family: register_source(family, before=before)
    name = _family_name(cls)
    taken = SOURCE_FAMILIES.get(name)
    if taken is not None and taken is not cls:
        raise SourceError(f"source family {name!r} is already registered ({_qualname(taken)})",
                          hint="Give the new family another name.")
    if before is not None and (before not in SOURCE_FAMILIES or before == name):
        raise SourceError(f"register_source({_qualname(cls)}, before={before!r}): no other "
                          f"family is named {before!r}; registered: {', '.join(SOURCE_FAMILIES)}")
    families = [(k, v) for k, v in SOURCE_FAMILIES.items() if k != name]
    at = len(families) if before is None else [k for k, _ in families].index(before)
    families.insert(at, (name, cls))
    SOURCE_FAMILIES.clear()  # in place: whoever holds the registry sees the new order
    SOURCE_FAMILIES.update(families)
    return cls


def source_families() -> dict[str, SourceFamily]:
    """Every family, in the order they are tried (installed plugins included)."""
    _load_entry_points()
    return dict(SOURCE_FAMILIES)


def _family_name(cls: Any) -> str:
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name or not callable(getattr(cls, "guess_can_open", None)):
        raise SourceError(f"{_qualname(cls)} is not a checkpoint source family: it needs a "
                          "class attribute 'name' (a non-empty string) and a classmethod "
                          "guess_can_open(spec)", hint="Subclass flq_audit.sources.CheckpointSource.")
    return name


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _load_entry_points() -> None:
    """Register the families installed packages declare under ``flq_audit.sources``, once.

    A family's class attribute ``before`` (a family name) places it as ``before=`` does.
    """
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    from importlib.metadata import entry_points

    points = sorted(entry_points(group=ENTRY_POINT_GROUP),
                    key=lambda p: (_distribution(p), p.name))
    for point in points:
        try:
            cls = point.load()
            register_source(cls, before=getattr(cls, "before", None))
        except Exception as err:  # a plugin's own failure: said in one line, no traceback
            raise SourceError(
                f"the source plugin {point.name!r} ({point.value}) of the distribution "
                f"{_distribution(point)} could not be loaded: {type(err).__name__}: "
                f"{getattr(err, 'message', err)}", hint=f"Fix or uninstall {_distribution(point)}"
                f" (it declares the entry point {point.name} in the group {ENTRY_POINT_GROUP}).",
            ) from None
    _ENTRY_POINTS_LOADED = True


def _distribution(point: Any) -> str:
    dist = getattr(point, "dist", None)
    return "?" if dist is None else f"{dist.name} {dist.version}"


register_source(LocalFolderSource)
register_source(HubSource)  # after local: an existing folder named like ORG/NAME stays local


_OPTION_HINTS = {
    ("local", "revision_pattern"): "--revision-pattern matches Hub branch names; for the files "
    "of a local folder give --name-pattern REGEX (the same syntax, a named group 'step').",
}


def open_source(spec: str, **options: Any) -> CheckpointSource:
    """Turn a CLI ``SOURCE`` into a :class:`CheckpointSource` (first family that claims it).

    ``options`` (e.g. ``revision_pattern=``, ``cache=`` for the Hub family) go to the family's
    constructor; options left at ``None`` are dropped, and one the chosen family does not take
    is an error.
    """
    given = {k: v for k, v in options.items() if v is not None}
    _load_entry_points()
    local = looks_local(spec)
    if local and not Path(spec).expanduser().exists():
        raise CheckpointNotFoundError(
            f"source {spec!r} does not exist: no such folder ({local}); it was not looked up "
            "on the Hub",
            path=spec, hint="Check the path; for a Hub repository write hf://ORG/NAME.",
        )
    for family in SOURCE_FAMILIES.values():
        if family.guess_can_open(spec):
            accepted = inspect.signature(family).parameters
            unknown = sorted(k for k in given if k not in accepted)
            if unknown:
                raise SourceError(
                    f"option(s) {', '.join(unknown)} do not apply to {family.name} source {spec!r}",
                    path=spec, hint=next((_OPTION_HINTS[family.name, k] for k in unknown
                                          if (family.name, k) in _OPTION_HINTS), None),
                )
            return family(spec, **given)
    raise CheckpointNotFoundError(
        f"source {spec!r} does not exist: it is not a local folder nor a Hub repo id (ORG/NAME)"
        f" (known source families: {', '.join(SOURCE_FAMILIES)})",
        path=spec,
        hint="Check the path, or give a Hub repository as ORG/NAME or hf://ORG/NAME.",
    )


def looks_local(spec: str) -> str | None:
    """Why ``spec`` reads as a local path (None when it may be a Hub repo id).

    It does when it starts with ``.``, ``/`` or ``~``, or when its first component exists
    here (``runs/mlpp`` beside a folder ``runs/``). ``hf://ORG/NAME`` never does.
    """
    if spec.startswith("hf://"):
        return None
    if spec.startswith((".", "/", "~")):
        return f"it starts with {spec[0]!r}"
    first = Path(spec).parts[0] if Path(spec).parts else ""
    if first and Path(first).exists():
        return f"{first!r} exists here"
    return None


__all__ = [
    "ENTRY_POINT_GROUP",
    "SOURCE_FAMILIES",
    "CheckpointRef",
    "CheckpointSource",
    "HubSource",
    "LeftOut",
    "LocalFolderSource",
    "RevisionInfo",
    "looks_local",
    "open_source",
    "parse_revision",
    "parse_step",
    "register_source",
    "select_steps",
    "source_families",
]
