"""Where checkpoints come from: a registry of source families."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Protocol, TypeVar

from flq_audit.errors import CheckpointNotFoundError, SourceError
from flq_audit.sources._base import CheckpointRef, CheckpointSource, LeftOut
from flq_audit.sources.hub import HubSource
from flq_audit.sources.local import LocalFolderSource
from flq_audit.sources.revisions import RevisionInfo, parse_revision
from flq_audit.sources.steps import parse_step, select_steps


class SourceFamily(Protocol):
    """A source class: its family name, its claim test and its constructor."""

    @property
    def name(self) -> str: ...

    def guess_can_open(self, spec: str) -> bool: ...

    def __call__(self, *args: Any, **kwargs: Any) -> CheckpointSource: ...


#: Families tried in this order by :func:`open_source`.
SOURCE_FAMILIES: dict[str, SourceFamily] = {}

Family = TypeVar("Family", bound=SourceFamily)


def register_source(cls: Family) -> Family:
    """Add a source family to the registry (used by each family module)."""
    SOURCE_FAMILIES[cls.name] = cls
    return cls


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
]
